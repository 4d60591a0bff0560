//! A real mesh endpoint against a hand-driven peer that holds the mesh
//! secret but breaks the protocol after the handshake: the agent closes
//! that connection with a reason, and keeps serving.

use std::sync::Arc;
use std::time::Duration;

use blazedb_proto::DeviceId;
use blazedb_proto::frame::LEN_PREFIX;
use blazedb_proto::mesh::{
    MAX_PEER_FRAME, Member, PEER_PROTOCOL_VERSION, PeerMessage, Role, to_frame,
};
use tokio::sync::watch;

use super::proof::{self, Binding};
use super::tls::{self, Gate};
use super::{Mesh, MeshConfig, close_code, session};
use crate::identity::Identity;
use crate::store::Store;

#[derive(Debug)]
struct Open;

impl Gate for Open {
    fn admits(&self, _: &DeviceId) -> bool {
        true
    }
}

/// A peer driven by hand: its own key, a client endpoint, the mesh secret.
struct Rogue {
    id: Identity,
    endpoint: quinn::Endpoint,
    _dir: tempfile::TempDir,
}

impl Rogue {
    fn new() -> Rogue {
        let dir = tempfile::tempdir().expect("dir");
        let id = Identity::load_or_create(dir.path()).expect("identity");
        let (_, client_cfg) = tls::quic_configs(
            &id,
            Arc::new(Open),
            Arc::new(quinn::TransportConfig::default()),
        )
        .expect("configs");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(client_cfg);
        Rogue {
            id,
            endpoint,
            _dir: dir,
        }
    }

    /// Connects to `mesh` and completes the member handshake honestly;
    /// the control stream stays open while the returned streams live.
    async fn member_session(
        &self,
        mesh: &Mesh,
    ) -> (quinn::Connection, (quinn::SendStream, quinn::RecvStream)) {
        let keys = mesh.shared.keys().expect("a mesh");
        let name = tls::server_name_for(Some(&mesh.shared.me));
        let conn = self
            .endpoint
            .connect(mesh.local_addr(), &name)
            .expect("connect")
            .await
            .expect("connected");
        let binding = Binding::of(&conn).expect("binding");
        let me = self.id.device_id();
        let hello = PeerMessage::Hello {
            version: PEER_PROTOCOL_VERSION,
            mesh: keys.id,
            proof: proof::make(&keys.secret, proof::HELLO, &binding, &me),
            me: Member {
                device: me,
                name: "rogue".into(),
                role: Role::Device,
                removed: false,
                addrs: Vec::new(),
            },
        };
        let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
        send.write_all(&to_frame(&hello).expect("frame"))
            .await
            .expect("send hello");
        let reply = session::read_frame(&mut recv)
            .await
            .expect("reply")
            .expect("a frame");
        assert!(
            matches!(PeerMessage::decode(&reply), Ok(PeerMessage::Hello { .. })),
            "the agent did not accept an honest member"
        );
        (conn, (send, recv))
    }
}

/// Waits for the agent to close `conn`, and returns its code and reason.
async fn closed_by_agent(conn: &quinn::Connection) -> (quinn::VarInt, String) {
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the agent did not close the connection");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => (
            c.error_code,
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("the connection ended otherwise: {other}"),
    }
}

async fn start_mesh() -> (Mesh, Store, watch::Sender<bool>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let id = Identity::load_or_create(dir.path()).expect("identity");
    let store =
        Store::open(&dir.path().join("db"), id.device_id(), Default::default()).expect("store");
    let (stop, shutdown) = watch::channel(false);
    let config = MeshConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        role: Role::Device,
        name: "agent".into(),
        mdns: false,
        mdns_loopback_only: false,
        announce: Vec::new(),
        peers: Vec::new(),
    };
    let mesh = Mesh::start(config, &id, store.clone(), dir.path(), shutdown)
        .await
        .expect("mesh");
    mesh.create().expect("create");
    (mesh, store, stop, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_breaks_the_protocol_is_cut_off_and_the_agent_goes_on() {
    let (mesh, store, stop, _dir) = start_mesh().await;
    let rogue = Rogue::new();

    // A length over the limit: refused from the prefix, nothing read.
    let (conn, _control) = rogue.member_session(&mesh).await;
    let mut s = conn.open_uni().await.expect("stream");
    let over = MAX_PEER_FRAME + 1;
    s.write_all(&over.to_be_bytes()).await.expect("prefix");
    let (code, reason) = closed_by_agent(&conn).await;
    assert_eq!(code, close_code::PROTOCOL);
    assert!(reason.contains("limit"), "{reason}");

    // A frame of the right shape whose content is not a sync message.
    let (conn, _control) = rogue.member_session(&mesh).await;
    let mut s = conn.open_uni().await.expect("stream");
    let garbage = [0xc1u8; 16];
    let mut frame = (garbage.len() as u32).to_be_bytes().to_vec();
    assert_eq!(frame.len(), LEN_PREFIX);
    frame.extend_from_slice(&garbage);
    s.write_all(&frame).await.expect("frame");
    let (code, reason) = closed_by_agent(&conn).await;
    assert_eq!(code, close_code::PROTOCOL);
    assert!(reason.contains("undecodable"), "{reason}");

    // The agent still takes members, and shows this one connected.
    let (conn, _control) = rogue.member_session(&mesh).await;
    let me = rogue.id.device_id();
    let start = std::time::Instant::now();
    while !mesh
        .peers()
        .iter()
        .any(|p| p.member.device == me && p.connected)
    {
        assert!(
            conn.close_reason().is_none(),
            "the agent closed an honest session"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the member never showed as connected"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    conn.close(0u32.into(), b"done");
    let _ = stop.send(true);
    mesh.stop().await;
    store.shutdown().await.expect("store shutdown");
}
