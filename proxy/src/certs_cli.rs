//! `tollgate certs ca` and `tollgate certs issue`: the development CA on the command line (demo and tests). All
//! certificate logic lives in the `certs` crate; this module parses arguments, writes files and prints what it did.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certs::{DevCa, SpiffeId, TrustDomain, write_svid_files};

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a development CA for a trust domain: writes DIR/ca.pem (the trust bundle) and DIR/ca.key (0600).
    Ca {
        /// Trust domain name, e.g. `cluster.local` (no `spiffe://`).
        #[arg(long)]
        trust_domain: String,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// CA validity in seconds (default one year).
        #[arg(long, default_value_t = 365 * 24 * 3600)]
        ttl_secs: u64,
        /// Replace an existing CA in DIR (every SVID it issued stops verifying).
        #[arg(long)]
        force: bool,
    },
    /// Issue an X.509-SVID from a development CA: writes DIR/svid.pem, DIR/svid.key (0600) and DIR/bundle.pem.
    Issue {
        /// Directory of a CA made by `tollgate certs ca`.
        #[arg(long)]
        ca: PathBuf,
        /// The workload's SPIFFE ID, e.g. `spiffe://cluster.local/ns/default/sa/web`.
        #[arg(long)]
        spiffe_id: String,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// SVID validity in seconds (default one hour; rotate at half of it).
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

/// Runs one `tollgate certs` command; prints the files written.
pub fn run(cmd: CertsCommand) -> anyhow::Result<bool> {
    match cmd {
        CertsCommand::Ca {
            trust_domain,
            out,
            ttl_secs,
            force,
        } => {
            let td = TrustDomain::new(&trust_domain).context("--trust-domain")?;
            let key = out.join(certs::devca::CA_KEY_FILE);
            if key.exists() && !force {
                anyhow::bail!(
                    "{} already exists; pass --force to replace the CA (SVIDs it issued will stop verifying) or choose another --out",
                    key.display()
                );
            }
            let ca = DevCa::create(&td, Duration::from_secs(ttl_secs))?;
            ca.save(&out)?;
            println!(
                "created development CA for trust domain {td}: {} (bundle), {} (key)",
                out.join(certs::devca::CA_CERT_FILE).display(),
                key.display()
            );
        }
        CertsCommand::Issue {
            ca,
            spiffe_id,
            out,
            ttl_secs,
        } => {
            let id = SpiffeId::parse(&spiffe_id).context("--spiffe-id")?;
            let ca = Arc::new(DevCa::load(&ca)?);
            let svid = ca.issue_for(&id, Duration::from_secs(ttl_secs))?;
            let files = write_svid_files(&svid, &ca.bundle(), &out)?;
            println!(
                "issued {id} valid for {ttl_secs}s: {} {} {}",
                files.cert.display(),
                files.key.display(),
                files.bundle.display()
            );
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_then_issue_writes_an_svid_that_verifies_against_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let svid_dir = dir.path().join("web");
        run(CertsCommand::Ca {
            trust_domain: "cluster.local".into(),
            out: ca_dir.clone(),
            ttl_secs: 86400,
            force: false,
        })
        .unwrap();
        run(CertsCommand::Issue {
            ca: ca_dir.clone(),
            spiffe_id: "spiffe://cluster.local/ns/default/sa/web".into(),
            out: svid_dir.clone(),
            ttl_secs: 600,
        })
        .unwrap();
        let files = certs::SvidFiles::in_dir(&svid_dir);
        let source = certs::FileSource::new(&files);
        let (svid, bundles) = source.load().unwrap();
        assert_eq!(
            svid.spiffe_id().to_string(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
        let life = svid.not_after().duration_since(svid.not_before()).unwrap();
        assert_eq!(life, Duration::from_secs(600));
        let verifier = certs::SpiffeVerifier::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(bundles)),
            certs::AllowedIds::AnyTrusted,
        );
        verifier
            .verify(
                &svid.chain()[0],
                &svid.chain()[1..],
                certs::pki_types::UnixTime::now(),
                certs::webpki::KeyUsage::client_auth(),
            )
            .unwrap();
    }

    #[test]
    fn refusals_name_the_flag_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(CertsCommand::Ca {
            trust_domain: "Bad_Domain".into(),
            out: dir.path().into(),
            ttl_secs: 60,
            force: false,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("--trust-domain"), "{err:#}");
        let make = |force| {
            run(CertsCommand::Ca {
                trust_domain: "td".into(),
                out: dir.path().into(),
                ttl_secs: 60,
                force,
            })
        };
        make(false).unwrap();
        let err = make(false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        make(true).unwrap();
        let err = run(CertsCommand::Issue {
            ca: dir.path().into(),
            spiffe_id: "spiffe://other/ns/a/sa/b".into(),
            out: dir.path().join("svid"),
            ttl_secs: 60,
        })
        .unwrap_err();
        assert!(err.to_string().contains("--trust-domain other"), "{err}");
        let err = run(CertsCommand::Issue {
            ca: dir.path().join("missing"),
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            out: dir.path().join("svid"),
            ttl_secs: 60,
        })
        .unwrap_err();
        assert!(err.to_string().contains("tollgate certs ca"), "{err}");
    }
}
