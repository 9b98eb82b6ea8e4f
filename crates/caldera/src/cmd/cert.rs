//! `caldera cert`: a private CA and certificates for a fleet (ECDSA P-256, made with rcgen), so
//! that both of the master's ports can speak TLS without a public CA.
//!
//! ```text
//! caldera cert ca --out tls/                                   # tls/ca.pem, tls/ca-key.pem
//! caldera cert issue --ca tls/ --name master.internal --san 10.0.0.5 --out tls/
//!                                                              # tls/master.internal.pem, …-key.pem
//! ```
//!
//! The master serves `--tls-cert tls/master.internal.pem --tls-key tls/master.internal-key.pem`;
//! workers and the CLI trust `--ca-file tls/ca.pem`. Keys are written mode 0600 and no file is
//! ever overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// The CA's subject name, followed by a tag of its key: unique per CA (clients tell two CAs
/// apart by name), and found again from the key alone, so `issue` can sign with a CA made by `ca`.
const CA_NAME: &str = "caldera fleet CA";

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a private CA: DIR/ca.pem (give it to workers and CLI users as --ca-file) and
    /// DIR/ca-key.pem (keep it secret; only `caldera cert issue` needs it).
    Ca(CaArgs),
    /// Issue a server certificate for the master, signed by a CA made with `caldera cert ca`:
    /// DIR/NAME.pem and DIR/NAME-key.pem (the master's --tls-cert and --tls-key).
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// Directory to write ca.pem and ca-key.pem into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding the CA's ca.pem and ca-key.pem.
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// The master's host name as workers and users reach it (the certificate's subject and first
    /// subject alternative name; also the output files' name).
    #[arg(long)]
    pub name: String,
    /// More names or IP addresses the master is reached by (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub san: Vec<String>,
    /// Directory to write NAME.pem and NAME-key.pem into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

pub fn run(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Ca(args) => {
            let (cert, key) = make_ca(args.days)?;
            let written = write_pair(&args.out, "ca", &cert, &key)?;
            println!("CA certificate: {}", written[0].display());
            println!("CA key:         {} (keep it secret)", written[1].display());
            Ok(())
        }
        CertCommand::Issue(args) => {
            let ca_cert = read(&args.ca.join("ca.pem"))?;
            let ca_key = read(&args.ca.join("ca-key.pem"))?;
            let mut names = vec![args.name.clone()];
            names.extend(args.san.iter().map(|s| s.trim().to_owned()));
            let (cert, key) = issue(&ca_cert, &ca_key, &names, args.days).with_context(|| {
                format!("issuing a certificate with the CA in {}", args.ca.display())
            })?;
            let written = write_pair(&args.out, &args.name, &cert, &key)?;
            println!("certificate: {} (--tls-cert)", written[0].display());
            println!("key:         {} (--tls-key)", written[1].display());
            Ok(())
        }
    }
}

/// Valid from yesterday (a clock a little behind still accepts a certificate made today) until
/// `days` from today, midnight UTC.
fn set_validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    use chrono::Datelike;
    anyhow::ensure!(days >= 1, "--days must be at least 1");
    let today = chrono::Utc::now().date_naive();
    let end = today
        .checked_add_days(chrono::Days::new(u64::from(days)))
        .filter(|d| d.year() < 10_000)
        .context("--days is too large")?;
    let start = today
        .pred_opt()
        .context("the clock is at the start of time")?;
    let ymd = |d: chrono::NaiveDate| {
        // month 1..=12 and day 1..=31 fit a u8
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(start);
    params.not_after = ymd(end);
    Ok(())
}

fn serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f; // a positive number
    SerialNumber::from_slice(&bytes)
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let tag: String = params.key_identifier(key)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{CA_NAME} {tag}"));
    dn.push(DnType::OrganizationName, "caldera");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A new CA: its certificate and key, PEM.
pub fn make_ca(days: u32) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = ca_params(&key);
    set_validity(&mut params, days)?;
    params.serial_number = Some(serial());
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A server certificate for `names` (the first is the subject; IP addresses become IP SANs)
/// signed by the CA of `ca_cert_pem`/`ca_key_pem`, checked to verify against that CA for every
/// name before it is returned: its certificate and key, PEM.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    days: u32,
) -> anyhow::Result<(String, String)> {
    let mut unique: Vec<String> = Vec::new();
    for name in names.iter().filter(|n| !n.is_empty()) {
        ServerName::try_from(name.as_str())
            .with_context(|| format!("{name:?} is neither a host name nor an IP address"))?;
        if !unique.contains(name) {
            unique.push(name.clone());
        }
    }
    let names = unique;
    let subject = names.first().context("a certificate needs a name")?.clone();
    let ca_key = KeyPair::from_pem(ca_key_pem).context("ca-key.pem is not a private key")?;
    let issuer = Issuer::new(ca_params(&ca_key), ca_key);
    let mut params = CertificateParams::new(names.clone())
        .with_context(|| format!("{names:?}: not host names or IP addresses"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, subject);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days)?;
    params.serial_number = Some(serial());
    let key = KeyPair::generate().context("generating the key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    for name in &names {
        verifies(ca_cert_pem, cert.der(), name).with_context(|| {
            format!(
                "the new certificate does not verify against ca.pem for {name}: is ca.pem the CA \
                 that `caldera cert ca` made with this ca-key.pem? (other CAs: use your PKI)"
            )
        })?;
    }
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether `cert` verifies as a server certificate for `name` against the CA of `ca_pem`, as a
/// worker or the CLI would check it.
fn verifies(ca_pem: &str, cert: &CertificateDer<'_>, name: &str) -> anyhow::Result<()> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.context("ca.pem is not PEM")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()?;
    let name = ServerName::try_from(name.to_owned())?;
    verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())?;
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes DIR/STEM.pem and DIR/STEM-key.pem (0600), refusing to replace either.
fn write_pair(dir: &Path, stem: &str, cert: &str, key: &str) -> anyhow::Result<[PathBuf; 2]> {
    anyhow::ensure!(
        !stem.is_empty() && !stem.contains(['/', '\\']) && stem != "." && stem != "..",
        "{stem:?} cannot be a file name"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    for path in [&cert_path, &key_path] {
        anyhow::ensure!(
            !path.exists(),
            "{} exists; remove it or choose another --out",
            path.display()
        );
    }
    write_new(&key_path, key, 0o600)?;
    write_new(&cert_path, cert, 0o644)?;
    Ok([cert_path, key_path])
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
