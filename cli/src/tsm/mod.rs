//! `kagi tsm …` (the TSM server, the provider's and operator's tools, the audit trail) and
//! `kagi relay` (the phone app's part).

use super::common::{LimitArgs, read_secret, runtime, write_private};
use super::{Failure, print_json};

pub mod jpki_issuer;
mod load;
mod load_job;
mod load_three;
pub mod mno_tsm;
mod parties;
mod serve;

use clap::{Args, Subcommand};
use kagi_online::tsm::client::{Client, Link};
pub use parties::load_party;
use parties::{mno_cmd, op_id, provider_cmd};
use serde::Deserialize;
use serde_json::json;
use serve::{init, serve};
use std::path::PathBuf;
use tsm_protocol::relay::UserCredentials;

#[derive(Subcommand)]
pub enum TsmCmd {
    /// Create a TSM's keys and configuration, with a demo provider and operator, in DIR:
    /// tsm.toml, sp.toml, mno.toml, their P-256 keys, the provider's content key and its
    /// security-domain master keys (keys/provider.keys, development only).
    Init {
        /// Where to write (created).
        #[arg(long)]
        dir: PathBuf,
        /// The TSM's address in the configuration files.
        #[arg(long, default_value = "127.0.0.1:8750")]
        listen: String,
        /// Serve HTTPS with a self-signed certificate made here (tls.crt.pem, tls.key.pem;
        /// for 127.0.0.1 and localhost) that the provider's, operator's and relay's
        /// configurations pin.
        #[arg(long)]
        tls: bool,
    },
    /// Run the TSM until SIGINT or SIGTERM (requests in flight finish).
    Serve(ServeArgs),
    /// A service provider's requests to the TSM.
    Provider {
        /// The provider's configuration (sp.toml from `kagi tsm init`).
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: ProviderCmd,
    },
    /// The mobile operator's notices to the TSM.
    Mno {
        /// The operator's configuration (mno.toml from `kagi tsm init`).
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: MnoCmd,
    },
    /// Print the audit trail from the TSM's database.
    Audit {
        /// The database (a SQLite file or postgres://…).
        #[arg(long)]
        database: String,
        /// Only this operation.
        #[arg(long)]
        op: Option<String>,
    },
    /// Drive many download sessions against a TSM (loopback only) and report sessions per
    /// second and the TSM's time per session.
    Load(load::LoadArgs),
}

/// `kagi tsm serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The TSM's configuration (tsm.toml).
    #[arg(long)]
    config: PathBuf,
    /// The database: a SQLite file (default: the configuration's) or postgres://user@host/db
    /// for several instances sharing state.
    #[arg(long)]
    database: Option<String>,
    /// Listen here instead of the configuration's address.
    #[arg(long)]
    listen: Option<String>,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Development key store for the providers' security-domain master keys (DIR/NAME.keys).
    #[arg(long, conflicts_with = "hsm_module")]
    insecure_file_keys: Option<PathBuf>,
    #[command(flatten)]
    hsm: super::perso::HsmArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    runtime: crate::common::RuntimeArgs,
}

#[derive(Subcommand)]
pub enum ProviderCmd {
    /// Issue a JPKI user-authentication credential to a SIM, on the user's application signed
    /// with their My Number card (checked first; each application is accepted once), the
    /// provider playing the JPKI system itself (single-organisation mode; with a JPKI issuer
    /// use `apply`): the key is made here, certified by the test CA, sealed together with the PIN to the SIM's own key
    /// agreement key (its certificate, fetched from the TSM, must check against the
    /// manufacturer CA) and the applet instance; prints the operation, the device ticket and
    /// the one-time access code to deliver.
    Issue {
        /// The SIM.
        #[arg(long)]
        iccid: String,
        /// The test CA directory (`kagi ca init`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The card manufacturer's CA certificate (PEM or DER) the SIM's key agreement
        /// certificate must check against (`kagi sim provision` prints where it is).
        #[arg(long)]
        manufacturer_ca: PathBuf,
        /// File with the authentication PIN (4 digits).
        #[arg(long)]
        pin_file: PathBuf,
        /// File with the user's password (as registered with the provider).
        #[arg(long)]
        password_file: PathBuf,
        /// An RSA-2048 key (as the My Number card's) instead of P-256.
        #[arg(long)]
        rsa: bool,
        /// The user's application, signed with their My Number card's signature key
        /// (`kagi jpki apply`): it must verify against the signature CA of --ca-dir
        /// (sign-ca.crt.der, its CRL sign-ca.crl.der when present), be recent and name this
        /// SIM and provider. The credential is linked to its certificate's serial.
        #[arg(long)]
        application: PathBuf,
        /// Revoked signature-certificate serials, one per line (decimal or 0x hex), besides
        /// the CA's CRL.
        #[arg(long)]
        sign_revoked: Option<PathBuf>,
        /// How old (seconds) an application may be.
        #[arg(long, default_value_t = 600)]
        application_max_age: u64,
        /// Removed: the serial now comes from the verified application's certificate.
        #[arg(long, hide = true)]
        my_number_serial: Option<String>,
        /// Write the operation, ticket, access code and certificate here (JSON; the
        /// certificate next to it as .crt.der).
        #[arg(long)]
        out: PathBuf,
        /// Minutes the download may take to happen.
        #[arg(long, default_value_t = 30)]
        valid_minutes: u64,
    },
    /// Ask for a JPKI user-authentication credential on the user's application signed with
    /// their My Number card, through an SP-TSM linked to a JPKI issuer (`kagi jpki-issuer`):
    /// the issuer checks the application, makes the key and certificate and seals them with
    /// a PIN (sent to the holder by its PIN mailer) to the SIM; the provider holds neither
    /// key nor PIN nor CA. Writes the operation and the device ticket; the SP-TSM mails the
    /// one-time access code to the address the user signed into the application (⑪), so the
    /// provider never learns it (`access_code` is null in the --out file).
    Apply {
        /// The SIM.
        #[arg(long)]
        iccid: String,
        /// The user's application (`kagi jpki apply`).
        #[arg(long)]
        application: PathBuf,
        /// File with the user's password (as registered with the provider).
        #[arg(long)]
        password_file: PathBuf,
        /// Write the operation and ticket here (JSON, 0600).
        #[arg(long)]
        out: PathBuf,
        /// Minutes the download may take to happen.
        #[arg(long, default_value_t = 30)]
        valid_minutes: u64,
    },
    /// An operation's state.
    Status {
        /// The operation.
        #[arg(long)]
        op: String,
    },
    /// Check an issuance's receipt: signed by the TSM, for this request and certificate, and
    /// the on-card key proof verifies.
    Receipt {
        /// The JSON `issue` wrote.
        #[arg(long)]
        issued: PathBuf,
    },
    /// Revoke a credential (effective at once).
    Revoke {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
        /// card-lost, superseded, user-request, expired.
        #[arg(long, default_value = "card-lost")]
        reason: String,
    },
    /// Suspend a credential at the holder's request: recorded at the JPKI issuer (its CRL
    /// lists the certificate as certificateHold) until `resume`.
    Suspend {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
    },
    /// Resume a suspended credential (the issuer's next CRL no longer lists it).
    Resume {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
    },
    /// A credential's standing.
    Check {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
    },
    /// Set a new PIN on the card, through the relay.
    ResetPin {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
        /// The card manufacturer's CA certificate (PEM or DER) the SIM's key agreement
        /// certificate must check against.
        #[arg(long)]
        manufacturer_ca: PathBuf,
        /// File with the new PIN.
        #[arg(long)]
        pin_file: PathBuf,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the ticket and access code (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Reset a credential's PIN on the holder's fresh pin-reset application (`kagi jpki
    /// apply --kind pin-reset`, signed with the same My Number card): the JPKI issuer makes
    /// the PIN (the holder's letter) sealed to the SIM; the access code is mailed to the
    /// application's contact. The only PIN reset an SP-TSM with a JPKI issuer takes.
    ApplyPinReset {
        /// The issuing operation.
        #[arg(long)]
        credential: String,
        /// The signed pin-reset application.
        #[arg(long)]
        application: PathBuf,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the operation and device ticket (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Move a credential to a new SIM — of the same operator or another (MVNO) — on the
    /// holder's fresh transfer application (`kagi jpki apply --kind transfer --from-iccid OLD
    /// --iccid NEW`, signed with the My Number card the credential is linked to): the JPKI
    /// issuer makes the new credential, the new SIM's MNO-TSM prepares it, and once it is
    /// written the old certificate is revoked (superseded). The access code is mailed to the
    /// application's contact.
    ApplyTransfer {
        /// The issuing operation of the credential that moves.
        #[arg(long)]
        credential: String,
        /// The new SIM.
        #[arg(long)]
        iccid: String,
        /// The signed transfer application.
        #[arg(long)]
        application: PathBuf,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the operation and device ticket (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write wallet data (member id, tickets, points) through the relay.
    Wallet {
        /// The SIM.
        #[arg(long)]
        iccid: String,
        /// Set the member id.
        #[arg(long)]
        member: Option<String>,
        /// Add a ticket.
        #[arg(long)]
        ticket: Vec<String>,
        /// Add (or take, negative) points.
        #[arg(long, allow_hyphen_values = true)]
        points: Option<i32>,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the ticket and access code (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Cancel an operation that has not completed.
    Cancel {
        /// The operation.
        #[arg(long)]
        op: String,
    },
}

#[derive(Subcommand)]
pub enum MnoCmd {
    /// Register a SIM (its ICCID, card image number and the provider's domain on it).
    RegisterCard {
        /// ICCID.
        #[arg(long)]
        iccid: String,
        /// Card image number (hex).
        #[arg(long)]
        cin: String,
        /// The provider domain's AID.
        #[arg(long, default_value = "A00000015153505001")]
        sd: String,
        /// Free memory on record, bytes.
        #[arg(long, default_value_t = 65536)]
        free_memory: u32,
        /// The SIM's key agreement certificate from its manufacturer (PEM or DER; `kagi sim
        /// provision` writes it): providers seal credentials to it.
        #[arg(long)]
        card_certificate: Option<PathBuf>,
    },
    /// Create a provider's security domain on a SIM through the relay (the issuer domain's
    /// keys, then the provider's keys in place of the domain's initial ones); writes the
    /// ticket and access code for the user.
    CreateSd {
        /// ICCID.
        #[arg(long)]
        iccid: String,
        /// The new domain's AID.
        #[arg(long, default_value = "A00000015153505001")]
        sd: String,
        /// The provider it is for.
        #[arg(long, default_value = "sp:kagi-bank")]
        provider: String,
        /// File with the user's password.
        #[arg(long)]
        password_file: PathBuf,
        /// Where to write the ticket and access code (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// The device ticket that deletes a provider's domain on an old SIM whose credential moved
    /// to another SIM: hand it to the subscriber, whose phone runs `kagi relay --tsm
    /// MNO-TSM --ticket-file …` with the old SIM (the ticket alone opens the session). Writes
    /// the ticket (JSON) to --out; an expired or used ticket is replaced by a fresh one. A lost
    /// SIM gets none.
    RetireTicket {
        /// The old SIM's ICCID.
        #[arg(long)]
        iccid: String,
        /// Where to write the ticket (JSON, private).
        #[arg(long)]
        out: PathBuf,
    },
    /// The SIM was lost: every credential on it is revoked at once.
    CardLost {
        /// ICCID.
        #[arg(long)]
        iccid: String,
    },
    /// The subscriber moved to another SIM.
    SimChanged {
        /// Old ICCID.
        #[arg(long)]
        old: String,
        /// New ICCID.
        #[arg(long)]
        new: String,
    },
    /// Whether a SIM can take a credential.
    Eligibility {
        /// ICCID.
        #[arg(long)]
        iccid: String,
        /// Bytes needed.
        #[arg(long, default_value_t = 8192)]
        memory: u32,
    },
}

/// `kagi relay`: the phone app's part.
#[derive(Args)]
pub struct RelayArgs {
    /// The TSM (http://host:port).
    #[arg(long)]
    tsm: String,
    /// File with the device ticket.
    #[arg(long)]
    ticket_file: PathBuf,
    /// File with the access code (else asked for).
    #[arg(long)]
    access_code_file: Option<PathBuf>,
    /// File with the password (else asked for).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The card: a reader or the simulator.
    #[command(flatten)]
    target: super::Target,
    /// Model the phone's network: lte (50 ms round trip), 3g (300 ms), none, or milliseconds.
    #[arg(long, default_value = "none")]
    link: String,
    /// Append every message carried (both directions) to this file, to inspect what a relay
    /// sees.
    #[arg(long)]
    capture: Option<PathBuf>,
    /// Give up when the TSM is unreachable this long (seconds).
    #[arg(long, default_value_t = 300)]
    retry_for: u64,
    /// An HTTPS TSM's certificate (or CA) to trust instead of the system's roots.
    #[arg(long)]
    tsm_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyFile {
    party: String,
    signing_key: String,
    tsm: String,
    tsm_party: String,
    tsm_public_key: String,
    /// No longer used: present only to refuse an old configuration with a clear message.
    #[serde(default)]
    content_key: Option<String>,
    /// An HTTPS TSM's certificate (or CA) to trust, instead of the system's roots.
    #[serde(default)]
    tsm_ca: Option<String>,
}

/// Runs `kagi tsm …`.
pub fn run(cmd: &TsmCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        TsmCmd::Init { dir, listen, tls } => init(dir, listen, *tls, json_out),
        TsmCmd::Serve(a) => serve(a),
        TsmCmd::Provider { config, cmd } => {
            runtime()?.block_on(provider_cmd(config, cmd, json_out))
        }
        TsmCmd::Mno { config, cmd } => runtime()?.block_on(mno_cmd(config, cmd, json_out)),
        TsmCmd::Audit { database, op } => runtime()?.block_on(async {
            let store =
                tsm_server::store::Store::open(&tsm_server::store::Backend::parse(database))
                    .await?;
            let op = op.as_deref().map(op_id).transpose()?;
            let trail = store.audit_trail(op.as_ref()).await?;
            if json_out {
                let entries: Vec<serde_json::Value> = trail
                    .iter()
                    .map(|a| {
                        json!({"at": crate::common::rfc3339_ms(a.at), "op_id": a.op_id,
                            "actor": a.actor, "event": a.event, "detail": a.detail})
                    })
                    .collect();
                print_json(json!({ "audit": entries }));
            } else {
                for a in trail {
                    println!(
                        "{} {} {:<10} {:<18} {}",
                        crate::common::rfc3339_ms(a.at),
                        a.op_id,
                        a.actor,
                        a.event,
                        a.detail
                    );
                }
            }
            Ok(())
        }),
        TsmCmd::Load(a) => load::run(a, json_out),
    }
}

/// Runs `kagi relay`.
pub fn relay(args: &RelayArgs, trace: bool, json_out: bool) -> Result<(), Failure> {
    let ticket = read_secret(&args.ticket_file)?;
    let link = Link::parse(&args.link)?;
    let mut client = match &args.tsm_ca {
        Some(ca) => Client::with_ca(
            &args.tsm,
            link,
            &std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?,
        )?,
        None => Client::new(&args.tsm, link),
    };
    client.retry_for = std::time::Duration::from_secs(args.retry_for);
    client.tell_waiting = true;
    let given = match (&args.access_code_file, &args.password_file) {
        (Some(c), Some(p)) => Some(UserCredentials {
            access_code: read_secret(c)?.to_string(),
            password: read_secret(p)?.to_string().into(),
        }),
        _ => None,
    };
    // --trace shows the card side: the provider's SCP03-protected commands the relay carries.
    let mut ch = args.target.open(trace)?;
    let mut capture = args.capture.as_ref().map(|_| Vec::new());
    let mut asked = given.is_some();
    // Set when the files' access code or password was refused: then the relay stops with that
    // reason instead of prompting (a script has no terminal to answer on).
    let refused = std::sync::Mutex::new(None::<u8>);
    let interactive = {
        use std::io::IsTerminal;
        std::io::stdin().is_terminal()
    };
    let mut ask = |left: u8| -> Option<UserCredentials> {
        if !asked {
            asked = true;
        } else if given.is_some() {
            if let Ok(mut r) = refused.lock() {
                *r = Some(left);
            }
            if !interactive {
                return None;
            }
            eprintln!("the access code or password was not accepted ({left} tries left)");
        }
        let code = rpassword::prompt_password(format!("access code ({left} tries left): ")).ok()?;
        let password = rpassword::prompt_password("password: ").ok()?;
        Some(UserCredentials {
            access_code: code,
            password: password.into(),
        })
    };
    let out = runtime()?.block_on(async {
        kagi_online::tsm::relay::run(
            &client,
            ch.transport_mut(),
            kagi_online::tsm::relay::Options {
                ticket: ticket.to_string(),
                credentials: given.clone(),
                ask: &mut ask,
                agent: format!("kagi relay {}", env!("CARGO_PKG_VERSION")),
                capture: capture.as_mut(),
                limits: tsm_protocol::relief::DerivationLimits::production(),
            },
        )
        .await
    });
    let refused = refused.into_inner().ok().flatten();
    let out = match (out, refused) {
        (Err(kagi_online::tsm::relay::RelayError::NoCredentials), Some(left)) => {
            return Err(format!(
                "the access code or password in the files was not accepted ({left} tries left): \
                 check --access-code-file and --password-file and run the relay again"
            )
            .into());
        }
        (out, _) => out?,
    };
    args.target.finish(&ch)?;
    if let (Some(path), Some(c)) = (&args.capture, &capture) {
        // The messages carried hold access codes and passwords (sealed) and tickets.
        write_private(path, c)?;
    }
    let ok = out.outcome == tsm_protocol::relay::StopOutcome::Completed;
    if json_out {
        print_json(json!({
            "outcome": match out.outcome {
                tsm_protocol::relay::StopOutcome::Completed => "completed",
                tsm_protocol::relay::StopOutcome::Failed => "failed",
                tsm_protocol::relay::StopOutcome::Refused => "refused",
                tsm_protocol::relay::StopOutcome::Interrupted => "interrupted",
            }, "message": out.message, "orders": out.orders,
            "round_trips": out.round_trips, "seconds": out.elapsed.as_secs_f64(),
            "tsm_ms": out.tsm_time.as_secs_f64() * 1000.0, "link_rtt_ms": link.rtt.as_millis() as u64,
        }));
    } else {
        println!(
            "{:?}: {} — {} orders in {} round trips, {:.3} s (TSM {:.1} ms, link round trip {} ms)",
            out.outcome,
            out.message,
            out.orders,
            out.round_trips,
            out.elapsed.as_secs_f64(),
            out.tsm_time.as_secs_f64() * 1000.0,
            link.rtt.as_millis()
        );
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the download did not complete: {:?}: {}",
            out.outcome, out.message
        )
        .into())
    }
}
