//! TLS for the mesh: every device presents a self-signed certificate for
//! its long-term key, and each side accepts the other by the device id that
//! key hashes to, never through a certificate authority.
//!
//! The dialler names the device it expects in the server name (its id in
//! lowercase base32, or [`ANY_DEVICE`] when dialling a bare address), and
//! its verifier accepts that device only. The listener accepts any device
//! while [`Gate`] lets devices in at all; the session then decides by the
//! device's signed member record and its membership proof.

use std::sync::Arc;

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::ALPN;
use p256::pkcs8::{DecodePublicKey as _, EncodePrivateKey as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::Identity;

/// The server name used when dialling an address whose device is unknown.
pub const ANY_DEVICE: &str = "any.blazedb";

/// Decides which devices may complete a TLS handshake with this one.
pub trait Gate: Send + Sync + std::fmt::Debug {
    /// Whether `device` may connect, before it proves anything.
    fn admits(&self, device: &DeviceId) -> bool;
}

/// The P-256 key a certificate carries.
fn key_of_cert(cert: &CertificateDer<'_>) -> Option<p256::PublicKey> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    p256::PublicKey::from_public_key_der(spki.as_ref()).ok()
}

/// The device id a certificate's key hashes to.
pub fn device_of_cert(cert: &CertificateDer<'_>) -> Option<DeviceId> {
    Some(crate::identity::device_id_of(&key_of_cert(cert)?))
}

/// The server name that pins `device` when dialling it.
pub fn server_name_for(device: Option<&DeviceId>) -> String {
    match device {
        Some(d) => d.to_base32().to_lowercase(),
        None => ANY_DEVICE.to_owned(),
    }
}

/// This device's certificate and key, made fresh from its identity. The
/// certificate carries nothing but the key: peers pin the key's hash.
pub fn certificate(
    identity: &Identity,
) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let pkcs8 = identity.secret().to_pkcs8_der()?;
    let key = rcgen::KeyPair::try_from(pkcs8.as_bytes())?;
    let params = rcgen::CertificateParams::new(vec![server_name_for(Some(&identity.device_id()))])?;
    let cert = params.self_signed(&key)?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec())),
    ))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the QUIC server and client configurations for this device.
pub fn quic_configs(
    identity: &Identity,
    gate: Arc<dyn Gate>,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let (cert, key) = certificate(identity)?;
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let me = identity.device_id();

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PeerVerifier { me, gate, algs }))
        .with_single_cert(vec![cert.clone()], key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server)?,
    ));
    server.transport_config(transport.clone());

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer { me, algs }))
        .with_client_auth_cert(vec![cert], key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client)?,
    ));
    client.transport_config(transport);
    Ok((server, client))
}

fn refuse(why: String) -> rustls::Error {
    rustls::Error::General(why)
}

fn check_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

/// Accepts clients that the gate admits.
#[derive(Debug)]
struct PeerVerifier {
    me: DeviceId,
    gate: Arc<dyn Gate>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let device = device_of_cert(end_entity)
            .ok_or_else(|| refuse("the peer's certificate has no P-256 key".into()))?;
        if device == self.me {
            tracing::error!(
                "a device with this device's own id {device} connected: another machine \
                 runs with a copy of this device's key (a cloned disk or a restored \
                 backup). Give one of them a new identity by moving its device.key away"
            );
            return Err(refuse("duplicate device id".into()));
        }
        if !self.gate.admits(&device) {
            return Err(refuse(format!("device {device} is not trusted")));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(refuse("TLS 1.2 is not spoken".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// Accepts the server whose device id is in the server name, or any other
/// device when the name is [`ANY_DEVICE`] (the session's proof decides).
#[derive(Debug)]
struct PinnedServer {
    me: DeviceId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let device = device_of_cert(end_entity)
            .ok_or_else(|| refuse("the peer's certificate has no P-256 key".into()))?;
        if device == self.me {
            return Err(refuse("dialled this device itself".into()));
        }
        let name = server_name.to_str();
        if name != ANY_DEVICE && name != server_name_for(Some(&device)) {
            return Err(refuse(format!(
                "expected device {name}, found {device} at that address"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(refuse("TLS 1.2 is not spoken".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

fn peer_key(conn: &quinn::Connection) -> Option<p256::PublicKey> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    key_of_cert(certs.first()?)
}

/// The device id of the peer on an established connection.
pub fn peer_device(conn: &quinn::Connection) -> Option<DeviceId> {
    Some(crate::identity::device_id_of(&peer_key(conn)?))
}

/// The public key (SEC1) of the peer on an established connection, as
/// member records carry it.
pub fn peer_public_key(conn: &quinn::Connection) -> Option<Vec<u8>> {
    Some(peer_key(conn)?.to_sec1_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity::load_or_create(dir.path()).expect("identity");
        let (cert, _) = certificate(&id).expect("cert");
        assert_eq!(device_of_cert(&cert), Some(id.device_id()));
        assert_eq!(device_of_cert(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[derive(Debug)]
    struct Open;

    impl Gate for Open {
        fn admits(&self, _: &DeviceId) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn proofs_bind_to_one_connection_and_the_dialler_pins_the_device() {
        use crate::mesh::proof::{self, Binding};
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = Identity::load_or_create(da.path()).expect("a");
        let b = Identity::load_or_create(db.path()).expect("b");
        let t = Arc::new(quinn::TransportConfig::default());
        let (server_cfg, _) = quic_configs(&a, Arc::new(Open), t.clone()).expect("a cfg");
        let (_, client_cfg) = quic_configs(&b, Arc::new(Open), t).expect("b cfg");
        let loopback = "127.0.0.1:0".parse().expect("addr");
        let server = quinn::Endpoint::server(server_cfg, loopback).expect("server");
        let mut client = quinn::Endpoint::client(loopback).expect("client");
        client.set_default_client_config(client_cfg);
        let addr = server.local_addr().expect("addr");

        let mut conns = Vec::new();
        for _ in 0..2 {
            let dial = client
                .connect(addr, &server_name_for(Some(&a.device_id())))
                .expect("connect");
            let (c, s) = tokio::join!(dial, async {
                server.accept().await.expect("incoming").await
            });
            conns.push((c.expect("client side"), s.expect("server side")));
        }
        assert_eq!(peer_device(&conns[0].0), Some(a.device_id()));
        assert_eq!(peer_device(&conns[0].1), Some(b.device_id()));

        // Both ends of one connection derive the same binding; another
        // connection between the same devices derives another.
        let first = Binding::of(&conns[0].0).expect("binding");
        assert_eq!(first, Binding::of(&conns[0].1).expect("binding"));
        let second = Binding::of(&conns[1].1).expect("binding");
        assert_ne!(first, second);
        let secret = [3u8; 32];
        let captured = proof::make(&secret, proof::HELLO, &first, &b.device_id());
        assert!(proof::check(
            &secret,
            proof::HELLO,
            &first,
            &b.device_id(),
            &captured
        ));
        assert!(
            !proof::check(&secret, proof::HELLO, &second, &b.device_id(), &captured),
            "a proof captured on one connection worked on another"
        );

        // Dialling A's address while expecting another device fails.
        let other = DeviceId([7; 32]);
        let dial = client
            .connect(addr, &server_name_for(Some(&other)))
            .expect("connect");
        let (c, _) = tokio::join!(dial, async {
            if let Some(i) = server.accept().await {
                let _ = i.await;
            }
        });
        let err = c.expect_err("wrong device");
        assert!(err.to_string().contains("expected device"), "{err}");
    }
}
