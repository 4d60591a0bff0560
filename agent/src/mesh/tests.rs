//! A real mesh endpoint against a hand-driven peer: one that holds the
//! mesh secret but no member record is refused; a member that breaks the
//! protocol after the handshake is cut off with a reason, and the agent
//! keeps serving.

use std::sync::Arc;
use std::time::Duration;

use blazedb_proto::DeviceId;
use blazedb_proto::frame::LEN_PREFIX;
use blazedb_proto::mesh::{
    Addresses, MAX_PEER_FRAME, PEER_PROTOCOL_VERSION, PeerMessage, Role, to_frame,
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

    /// Has `mesh` (an admin) sign this device a member record, as when an
    /// invite is redeemed.
    fn admitted_by(&self, mesh: &Mesh) {
        let key = crate::access::sign::public_key_bytes(self.id.secret());
        mesh.shared
            .admit(&key, "rogue", Role::Device, Vec::new())
            .expect("admit");
    }

    /// Connects to `mesh` and sends an honest `Hello`; returns the
    /// connection, the control stream and the agent's first answer.
    async fn hello(
        &self,
        mesh: &Mesh,
    ) -> (
        quinn::Connection,
        (quinn::SendStream, quinn::RecvStream),
        Result<PeerMessage, session::SessionError>,
    ) {
        let keys = mesh.shared.keys().expect("a mesh");
        self.hello_with(mesh, &keys).await
    }

    /// As [`Rogue::hello`], proving membership with `keys`.
    async fn hello_with(
        &self,
        mesh: &Mesh,
        keys: &super::state::MeshKeys,
    ) -> (
        quinn::Connection,
        (quinn::SendStream, quinn::RecvStream),
        Result<PeerMessage, session::SessionError>,
    ) {
        let name = tls::server_name_for(Some(&mesh.shared.me));
        let conn = self
            .endpoint
            .connect(mesh.local_addr(), &name)
            .expect("connect")
            .await
            .expect("connected");
        let binding = Binding::of(&conn).expect("binding");
        let me = self.id.device_id();
        let chain = mesh.shared.roster_wire().records;
        let addrs = Addresses {
            mesh: keys.id,
            device: me,
            addrs: Vec::new(),
            version: 1,
        };
        let hello = PeerMessage::Hello {
            version: PEER_PROTOCOL_VERSION,
            mesh: keys.id,
            epoch: keys.epoch,
            proof: proof::make(&keys.secret, proof::HELLO, &binding, &me),
            chain,
            addrs: crate::access::sign::sign(
                self.id.secret(),
                crate::access::sign::Purpose::Addresses,
                &addrs,
            )
            .expect("sign"),
        };
        let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
        send.write_all(&to_frame(&hello).expect("frame"))
            .await
            .expect("send hello");
        let reply = match session::read_frame(&mut recv).await {
            Ok(Some(bytes)) => match PeerMessage::decode(&bytes) {
                Ok(PeerMessage::Refused { reason }) => Err(session::SessionError::Refused(reason)),
                Ok(m) => Ok(m),
                Err(e) => Err(session::SessionError::Protocol(e.to_string())),
            },
            Ok(None) => Err(session::SessionError::Protocol("closed".into())),
            Err(e) => Err(e),
        };
        (conn, (send, recv), reply)
    }

    /// Connects to `mesh` and completes the member handshake honestly;
    /// the control stream stays open while the returned streams live.
    async fn member_session(
        &self,
        mesh: &Mesh,
    ) -> (quinn::Connection, (quinn::SendStream, quinn::RecvStream)) {
        let (conn, control, reply) = self.hello(mesh).await;
        assert!(
            matches!(reply, Ok(PeerMessage::Hello { .. })),
            "the agent did not accept an honest member: {reply:?}"
        );
        (conn, control)
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
        member_links: super::overlay::DEFAULT_MEMBER_LINKS,
        checkpoint_ops: 10_000,
        count_traffic: true,
    };
    let mesh = Mesh::start(config, &id, store.clone(), dir.path(), shutdown)
        .await
        .expect("mesh");
    mesh.create().expect("create");
    (mesh, store, stop, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_secret_without_a_member_record_admits_nobody() {
    let (mesh, store, stop, _dir) = start_mesh().await;
    let stranger = Rogue::new();
    let (conn, _control, reply) = stranger.hello(&mesh).await;
    match reply {
        Err(session::SessionError::Refused(why)) => {
            assert!(why.contains("member record"), "{why}")
        }
        other => panic!("a device with the secret and no record got {other:?}"),
    }
    let (code, _) = closed_by_agent(&conn).await;
    assert_eq!(code, close_code::REFUSED);
    assert!(
        mesh.peers().is_empty(),
        "the stranger was taken as a member"
    );
    let _ = stop.send(true);
    mesh.stop().await;
    store.shutdown().await.expect("store shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_with_the_old_secret_is_told_it_was_removed() {
    let (mesh, store, stop, _dir) = start_mesh().await;
    let rogue = Rogue::new();
    rogue.admitted_by(&mesh);
    let old_keys = mesh.shared.keys().expect("keys");
    let (conn, _control) = rogue.member_session(&mesh).await;
    conn.close(0u32.into(), b"bye");
    mesh.remove(&rogue.id.device_id()).expect("remove");
    let new_keys = mesh.shared.keys().expect("keys");
    assert!(new_keys.epoch > old_keys.epoch && new_keys.secret != old_keys.secret);

    // It comes back with the secret it kept: it is told, and refused.
    let (conn, _control, reply) = rogue.hello_with(&mesh, &old_keys).await;
    match reply {
        Ok(PeerMessage::Removed { chain }) => {
            let last: blazedb_proto::mesh::MemberRecord =
                chain.last().expect("its record").decode().expect("record");
            assert_eq!(last.device, rogue.id.device_id());
            assert!(last.removed.is_some());
        }
        other => panic!("a removed device with the old secret got {other:?}"),
    }
    let (code, _) = closed_by_agent(&conn).await;
    assert_eq!(code, close_code::REMOVED);
    let _ = stop.send(true);
    mesh.stop().await;
    store.shutdown().await.expect("store shutdown");
}

/// Reads control messages until one satisfies `want`, failing after 5 s.
async fn expect_control(recv: &mut quinn::RecvStream, want: impl Fn(&PeerMessage) -> bool) {
    let read = async {
        loop {
            let frame = session::read_frame(recv)
                .await
                .expect("a control frame")
                .expect("the stream stays open");
            if want(&PeerMessage::decode(&frame).expect("decodable")) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the agent did not send the message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_frame_split_across_a_membership_change_is_read_whole() {
    let (mesh, store, stop, _dir) = start_mesh().await;
    let rogue = Rogue::new();
    rogue.admitted_by(&mesh);
    let me = rogue.id.device_id();
    let (conn, (mut send, mut recv)) = rogue.member_session(&mesh).await;
    let frame = to_frame(&PeerMessage::Members {
        roster: mesh.shared.roster_wire(),
    })
    .expect("frame");
    for round in 0..3 {
        // Half a frame arrives; while the agent waits for the rest, the
        // membership changes and the agent writes to this very stream.
        send.write_all(&frame[..frame.len() / 2])
            .await
            .expect("first half");
        let name = format!("renamed-{round}");
        mesh.set_device(&me, Some(name.clone()), None)
            .expect("rename");
        expect_control(&mut recv, |m| {
            matches!(m, PeerMessage::Members { roster }
                if roster.records.iter().any(|r| r.decode::<blazedb_proto::mesh::MemberRecord>()
                    .is_ok_and(|r| r.device == me && r.name == name)))
        })
        .await;
        send.write_all(&frame[frame.len() / 2..])
            .await
            .expect("second half");
    }
    // The agent still reads the stream in step: one more whole message,
    // one more change seen, and the connection is up.
    send.write_all(&frame).await.expect("whole frame");
    mesh.set_device(&me, Some("last".into()), None)
        .expect("rename");
    expect_control(&mut recv, |m| matches!(m, PeerMessage::Members { .. })).await;
    assert!(
        conn.close_reason().is_none(),
        "the agent lost its place in the control stream: {:?}",
        conn.close_reason()
    );
    let _ = stop.send(true);
    mesh.stop().await;
    store.shutdown().await.expect("store shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_breaks_the_protocol_is_cut_off_and_the_agent_goes_on() {
    let (mesh, store, stop, _dir) = start_mesh().await;
    let rogue = Rogue::new();
    rogue.admitted_by(&mesh);

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
        .any(|p| p.record.device == me && p.reach == super::Reach::Connected)
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
