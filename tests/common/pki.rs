//! A test CA and server certificates, generated with the `openssl` CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{run_ok, write_file};

/// A test CA and a server certificate signed by it, as PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates (with the `openssl` CLI) a CA and a server certificate for the given DNS names and
/// IP addresses (subjectAltName; the first DNS name, else "localhost", is also the CN) into
/// `dir`. ECDSA P-256, SHA-256, valid ten years, serverAuth, CA:FALSE: acceptable to rustls.
pub fn generate_test_pki(dir: &Path, dns_names: &[&str], ips: &[&str]) -> TestPki {
    fs::create_dir_all(dir).expect("mkdir pki dir");
    let pki = TestPki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let csr = dir.join("server.csr");
    let mut sans: Vec<String> = dns_names.iter().map(|d| format!("DNS:{d}")).collect();
    sans.extend(ips.iter().map(|i| format!("IP:{i}")));
    let ext = write_file(
        dir,
        "server-ext.cnf",
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n\
             subjectAltName={}\n",
            sans.join(",")
        ),
    );
    let cn = dns_names.first().copied().unwrap_or("localhost");
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let openssl = |args: &[&str]| {
        run_ok(
            &format!("openssl {args:?}"),
            Command::new("openssl").args(args).current_dir(dir),
            None,
            Duration::from_secs(60),
        );
    };
    // `openssl req` making a new unencrypted P-256 key at `key`, then `rest`.
    let req_new_key = |kind: &str, key: &Path, rest: &[&str]| {
        let key = p(key);
        let args = ["req", kind, "-newkey", "ec", "-pkeyopt"];
        let args = [
            &args[..],
            &["ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key],
            rest,
        ];
        openssl(&args.concat());
    };
    req_new_key(
        "-x509",
        &pki.ca_key,
        &[
            "-out",
            &p(&pki.ca_cert),
            "-days",
            "3650",
            "-sha256",
            "-subj",
            "/O=ldapsync tests/CN=ldapsync test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    req_new_key(
        "-new",
        &pki.key,
        &[
            "-out",
            &p(&csr),
            "-subj",
            &format!("/O=ldapsync tests/CN={cn}"),
        ],
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&pki.ca_cert),
        "-CAkey",
        &p(&pki.ca_key),
        "-CAcreateserial",
        "-out",
        &p(&pki.cert),
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        &p(&ext),
    ]);
    pki
}
