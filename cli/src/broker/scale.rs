//! `kagi broker scale`: the broker at the seed's scale (cards × services credentials) on this
//! machine. It loads synthetic cards with a credential for each service (sealed exactly as
//! enrolments seal them, under a KEK in the HSM or the development file store), then
//! measures, with the clock running only around what it names:
//!
//! - credential lookup + unwrap + use: `act` for random (card, service) pairs (session
//!   check, card check, policy, credential row, data-key unwrap, MAC or signature, audit
//!   row) — p50, p99, max;
//! - holder logins per second over HTTP on loopback (RSA-2048 card signatures made before
//!   the clock starts, as cards would), `--concurrency` in flight — the broker and the
//!   client share the machine's cores;
//! - the database's size per million credentials;
//! - a KEK rotation of every record, per million.

use crate::perso::HsmArgs;
use crate::{Failure, print_json};
use broker_protocol::Assurance;
use broker_protocol::api::{self, Act, CardLogin, Method, ServicePolicy};
use broker_server::store::Shard;
use broker_server::{Broker, Envelope, Shards};
use clap::Args;
use serde_json::json;
use sha2::Digest;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tsm_protocol::signing::{Policy, Signer, Trust};
use zeroize::Zeroizing;

/// `kagi broker scale` options.
#[derive(Args)]
pub struct ScaleArgs {
    /// Work directory (created; removed afterwards unless --keep).
    #[arg(long)]
    dir: PathBuf,
    /// Synthetic cards.
    #[arg(long, default_value_t = 100_000)]
    cards: usize,
    /// Services per card (credentials = cards × services).
    #[arg(long, default_value_t = 10)]
    services: usize,
    /// The databases, one per shard (default: DIR/broker.db).
    #[arg(long)]
    database: Vec<String>,
    /// Acts to time.
    #[arg(long, default_value_t = 2000)]
    acts: usize,
    /// Logins to time.
    #[arg(long, default_value_t = 1000)]
    logins: usize,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// Use the development file key store instead of the HSM.
    #[arg(long, conflicts_with = "hsm_module")]
    insecure_file_keys: bool,
    #[command(flatten)]
    hsm: HsmArgs,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn random_index(n: usize) -> Result<usize, Failure> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| e.to_string())?;
    Ok((u64::from_le_bytes(b) % n as u64) as usize)
}

/// Size of the databases, bytes (SQLite: the files; PostgreSQL: the database).
async fn database_bytes(shards: &Shards, paths: &[String]) -> Result<u64, Failure> {
    let mut total = 0;
    for (s, p) in shards.all().iter().zip(paths) {
        if p.starts_with("postgres") {
            let rows = s
                .query("SELECT pg_database_size(current_database())", vec![])
                .await?;
            total += rows.first().map(|r| r[0].int() as u64).unwrap_or(0);
        } else {
            for suffix in ["", "-wal"] {
                total += std::fs::metadata(format!("{p}{suffix}"))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// Runs the measurement.
pub fn run(args: &ScaleArgs, json_out: bool) -> Result<(), Failure> {
    std::fs::create_dir_all(args.dir.join("keys"))?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let (k1, k2) = (format!("scale{stamp}a"), format!("scale{stamp}b"));
    let make_kek = |id: &str| -> Result<(), Failure> {
        if args.insecure_file_keys {
            broker_server::FileEnvelope::new_kek(&args.dir.join("keys"), id)?;
        } else {
            kagi_hsm::create_kek(&args.hsm.config()?, &args.hsm.pin()?, id)?;
        }
        Ok(())
    };
    let open_keys = || -> Result<Arc<dyn Envelope>, Failure> {
        Ok(if args.insecure_file_keys {
            Arc::new(broker_server::FileEnvelope::open_dir(
                &args.dir.join("keys"),
            )?)
        } else {
            Arc::new(kagi_hsm::HsmEnvelope::open(
                &args.hsm.config()?,
                &args.hsm.pin()?,
            )?)
        })
    };
    if !args.insecure_file_keys && args.hsm.hsm_module.is_none() {
        return Err(
            "give --hsm-module … (SoftHSM2: see scripts/softhsm-init.sh) or --insecure-file-keys"
                .into(),
        );
    }
    make_kek(&k1)?;
    let ca = test_pki::TestCa::new("kagi broker scale CA")?;
    std::fs::write(args.dir.join("ca.crt.der"), ca.certificate_der()?)?;
    let mut state_key = Zeroizing::new([0u8; 32]);
    getrandom::fill(state_key.as_mut()).map_err(|e| e.to_string())?;
    let name = "broker:scale";
    let me = crate::common::party_id(name)?;
    let config = broker_server::Config {
        name: name.into(),
        signer: Signer::generate(me.clone())?,
        assertion_key: {
            use p256::elliptic_curve::Generate;
            p256::ecdsa::SigningKey::try_generate().map_err(|e| e.to_string())?
        },
        admin_trust: Trust::new(),
        policy: Policy::new(me),
        card_trust: broker_server::service::CardTrust::new(
            vec![args.dir.join("ca.crt.der")],
            vec![],
        ),
        envelope: open_keys()?,
        default_kek: k1.clone(),
        state_key,
        session_secs: 3600,
    };
    let databases = if args.database.is_empty() {
        vec![args.dir.join("broker.db").display().to_string()]
    } else {
        args.database.clone()
    };
    let report = crate::common::runtime()?.block_on(async {
        let backends: Vec<kagi_db::Backend> =
            databases.iter().map(|d| kagi_db::Backend::parse(d)).collect();
        let shards = Shards::open(&backends).await?;
        let broker = Arc::new(Broker::new(config, shards));
        let t = tsm_protocol::signing::now_ms() as i64;
        let services: Vec<String> = (0..args.services).map(|i| format!("svc-{i}")).collect();
        for (i, s) in services.iter().enumerate() {
            let method = if i % 5 == 4 {
                Method::SignP256
            } else {
                Method::Mac
            };
            let p = ServicePolicy {
                id: s.clone(),
                method,
                min_assurance: Assurance::Card,
                allowed_hours: None,
            };
            broker.shards().everywhere(vec![Shard::put_service(&p, t)]).await?;
        }

        // Real cards for the logins (RSA-2048 like the My Number card), then the synthetic
        // ones; all enrolled the same way.
        let real = 16.min(args.cards.max(1));
        eprintln!("making {real} RSA-2048 login cards…");
        let mut login_cards = Vec::new();
        for i in 0..real {
            use der::Encode;
            let key = test_pki::generate_rsa_key()?;
            let now = SystemTime::now();
            let cert = ca
                .issue_auth(
                    &key.to_public_key(),
                    &format!("REAL-{i}"),
                    1000 + i as u32,
                    now - Duration::from_secs(60),
                    now + Duration::from_secs(86_400),
                )?
                .to_der()?;
            login_cards.push((key, cert));
        }
        let real_ids: Vec<String> = (0..real).map(|i| format!("REAL-{i}")).collect();
        broker.enrol_many(&real_ids, &services).await?;
        let synthetic = args.cards.saturating_sub(real);
        eprintln!(
            "loading {} cards × {} services = {} credentials…",
            args.cards,
            args.services,
            args.cards * args.services
        );
        let start = Instant::now();
        let chunk = 10_000;
        let mut made = (real * args.services) as u64;
        for c in 0..synthetic.div_ceil(chunk) {
            let ids: Vec<String> = (c * chunk..((c + 1) * chunk).min(synthetic))
                .map(|i| format!("SYNTH-{i:09}"))
                .collect();
            made += broker.enrol_many(&ids, &services).await?;
            eprint!("\r  {made} credentials, {:.0} s", start.elapsed().as_secs_f64());
        }
        eprintln!();
        let load_secs = start.elapsed().as_secs_f64();
        let bytes = database_bytes(broker.shards(), &databases).await?;

        // Acts on random (card, service) pairs, through sessions made for random cards.
        let mut sessions = Vec::new();
        for _ in 0..args.acts.min(args.cards) {
            let card = match random_index(args.cards)? {
                i if i < real => format!("REAL-{i}"),
                i => format!("SYNTH-{:09}", i - real),
            };
            let shard = broker.shards().index_of(&card);
            let mut r = [0u8; 32];
            getrandom::fill(&mut r).map_err(|e| e.to_string())?;
            let token = format!("{shard}.{}", api::b64(&r));
            let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
            broker.shards().all()[shard]
                .commit(vec![Shard::put_session(
                    &hash,
                    &card,
                    Assurance::Card,
                    t / 1000 + 3600,
                )])
                .await?;
            sessions.push(token);
        }
        let mut act_times = Vec::new();
        let acts_start = Instant::now();
        for i in 0..args.acts {
            let a = Act {
                session: sessions[i % sessions.len().max(1)].clone(),
                service: services[random_index(services.len())?].clone(),
                consent: true,
                challenge: Some(api::b64(b"a service challenge, 32 bytes...")),
                nonce: None,
            };
            let t0 = Instant::now();
            broker.act(&a).await?;
            act_times.push(t0.elapsed());
        }
        let acts_secs = acts_start.elapsed().as_secs_f64();
        act_times.sort();

        // Logins over HTTP: the broker on loopback, the cards' signatures made beforehand.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(broker_server::http::serve(
            broker.clone(),
            listener,
            async {
                let _ = stop_rx.await;
            },
            None,
            Duration::from_secs(10),
        ));
        let client = kagi_online::broker::BrokerClient::new(std::slice::from_ref(&url), None)?;
        let mut prepared = Vec::new();
        for i in 0..args.logins {
            let c = client.challenge().await?;
            let (key, cert) = &login_cards[i % login_cards.len()];
            let nonce = api::unb64(&c.nonce).ok_or("challenge")?;
            let message = api::login_message(&c.broker, &nonce);
            use rsa::signature::{SignatureEncoding, Signer as _};
            let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone()).sign(&message);
            prepared.push(CardLogin {
                nonce: c.nonce,
                certificate: api::b64(cert),
                signature: api::b64(&sig.to_vec()),
            });
        }
        let queue = Arc::new(std::sync::Mutex::new(prepared));
        let login_start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency.max(1) {
            let (q, client) = (queue.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let next = q.lock().ok().and_then(|mut v| v.pop());
                    let Some(l) = next else { break };
                    let t0 = Instant::now();
                    client.login_card(&l).await?;
                    times.push(t0.elapsed());
                }
                Ok::<_, kagi_online::broker::BrokerClientError>(times)
            }));
        }
        let mut login_times = Vec::new();
        for t in tasks {
            login_times.extend(t.await??);
        }
        let login_secs = login_start.elapsed().as_secs_f64();
        login_times.sort();
        let _ = stop_tx.send(());
        let _ = server.await;

        // A KEK rotation of everything (the new KEK made while the broker runs).
        make_kek(&k2)?;
        broker
            .shards()
            .everywhere(vec![Shard::put_setting("current_kek", &k2)])
            .await?;
        let rot_start = Instant::now();
        let (rewrapped, remaining) = broker.rewrap_some(&k2, u64::MAX).await?;
        let rot_secs = rot_start.elapsed().as_secs_f64();
        let per_million = |secs: f64, n: u64| secs * 1e6 / n.max(1) as f64;
        Ok::<_, Failure>(json!({
            "cards": args.cards,
            "services": args.services,
            "credentials": made,
            "shards": databases.len(),
            "key_store": broker.envelope().describe(),
            "load_seconds": load_secs,
            "load_credentials_per_second": made as f64 / load_secs,
            "database_bytes": bytes,
            "database_mb_per_million": bytes as f64 / 1e6 * 1e6 / made.max(1) as f64,
            "act_ms": {"p50": percentile(&act_times, 0.5), "p99": percentile(&act_times, 0.99),
                       "max": percentile(&act_times, 1.0)},
            "acts_per_second_sequential": args.acts as f64 / acts_secs,
            "logins": args.logins,
            "logins_per_second": args.logins as f64 / login_secs,
            "login_ms": {"p50": percentile(&login_times, 0.5), "p99": percentile(&login_times, 0.99)},
            "rotation_rewrapped": rewrapped,
            "rotation_remaining": remaining,
            "rotation_seconds": rot_secs,
            "rotation_seconds_per_million": per_million(rot_secs, rewrapped),
        }))
    })?;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    if json_out {
        print_json(report);
    } else {
        let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
        println!(
            "broker scale: {} credentials ({} cards × {} services) on {} shard(s), keys in {}",
            report["credentials"],
            report["cards"],
            report["services"],
            report["shards"],
            report["key_store"].as_str().unwrap_or("")
        );
        println!(
            "  load             {:.1} s ({:.0} credentials/s)",
            f("load_seconds"),
            f("load_credentials_per_second")
        );
        println!(
            "  database         {:.0} MB per million credentials",
            f("database_mb_per_million")
        );
        println!(
            "  lookup+unwrap+use p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms ({:.0} acts/s one at a time)",
            report["act_ms"]["p50"].as_f64().unwrap_or(0.0),
            report["act_ms"]["p99"].as_f64().unwrap_or(0.0),
            report["act_ms"]["max"].as_f64().unwrap_or(0.0),
            f("acts_per_second_sequential")
        );
        println!(
            "  card logins      {:.0}/s over HTTP, {} in flight (p50 {:.2} ms, p99 {:.2} ms)",
            f("logins_per_second"),
            args.concurrency,
            report["login_ms"]["p50"].as_f64().unwrap_or(0.0),
            report["login_ms"]["p99"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  KEK rotation     {:.1} s for {} records = {:.0} s per million",
            f("rotation_seconds"),
            report["rotation_rewrapped"],
            f("rotation_seconds_per_million")
        );
    }
    Ok(())
}
