//! A TLS front for a plain-HTTP fake: terminates TLS with a freshly generated self-signed certificate
//! for 127.0.0.1 and relays the bytes, so a client's CA handling is tested against real TLS. With
//! [`TlsFront::start_mutual`] it also demands a client certificate signed by its own client CA (mutual
//! TLS, as CMF can be set up).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub struct TlsFront {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// The certificate the front presents, PEM: the CA a client must trust.
    pub ca_pem: String,
    /// With mutual TLS: a client certificate the front accepts, and its key (PEM).
    pub client: Option<(String, String)>,
    task: JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Serves TLS on a free loopback port in front of `backend` (`http://127.0.0.1:PORT`).
    pub async fn start(backend: &str) -> TlsFront {
        Self::serve(backend, false).await
    }

    /// As `start`, and every client must present a certificate of the front's client CA: one is in
    /// `client`. A client without one fails the handshake.
    pub async fn start_mutual(backend: &str) -> TlsFront {
        Self::serve(backend, true).await
    }

    async fn serve(backend: &str, mutual: bool) -> TlsFront {
        let backend = backend.trim_start_matches("http://").to_owned();
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("generate a certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let (builder, client) = if mutual {
            let (ca, client) = client_ca_and_certificate();
            let mut roots = RootCertStore::empty();
            roots.add(ca).expect("client CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            (builder.with_client_cert_verifier(verifier), Some(client))
        } else {
            (builder.with_no_client_auth(), None)
        };
        let config = builder
            .with_single_cert(
                vec![CertificateDer::from(key.cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der())),
            )
            .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, backend) = (acceptor.clone(), backend.clone());
                tokio::spawn(async move {
                    // A client that rejects the certificate ends the handshake; nothing to relay then.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(&backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            url,
            ca_pem: key.cert.pem(),
            client,
            task,
        }
    }
}

/// A client CA (DER, for the server's trust store) and a client certificate it signed with its key
/// (PEM).
fn client_ca_and_certificate() -> (CertificateDer<'static>, (String, String)) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let client_params =
        rcgen::CertificateParams::new(vec!["savepointd".to_owned()]).expect("client params");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let client = client_params
        .signed_by(&client_key, &ca)
        .expect("client certificate");
    (
        CertificateDer::from(ca.der().to_vec()),
        (client.pem(), client_key.serialize_pem()),
    )
}
