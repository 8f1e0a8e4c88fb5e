//! Certificates made in tests (rcgen): a CA, leaves signed by it written as PEM files, and
//! rustls client configurations that trust the CA.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smartproxy test CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write CA");
        Pki {
            ca_der: cert.der().clone(),
            ca: rcgen::Issuer::new(params, key),
            dir,
        }
    }

    /// A leaf for `names`, written as NAME.pem / NAME.key; returns the file stem.
    pub fn leaf(
        &self,
        stem: &str,
        names: &[&str],
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf");
        std::fs::write(self.dir.path().join(format!("{stem}.pem")), cert.pem()).expect("pem");
        std::fs::write(
            self.dir.path().join(format!("{stem}.key")),
            key.serialize_pem(),
        )
        .expect("key");
        (
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn client(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}
