//! The real PC/SC stack: a private pcscd with vsmartcard's vpcd driver, simulated cards served
//! by `kagi sim serve`, and clients going through libpcsclite — OpenSC's tools as an
//! independent client, and `kagi` itself over its PC/SC transport.

#![cfg(feature = "pcsc")]

mod support;

use support::PrivatePcsc;

/// The string field `field` of every object in the array `v[key]`.
fn strings<'a>(v: &'a serde_json::Value, key: &str, field: &str) -> Vec<&'a str> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap())
        .collect()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn opensc_sees_the_simulated_card() {
    let pcsc = PrivatePcsc::start(1);
    let list = pcsc.run("opensc-tool", &["-l"]);
    let out = text(&list);
    assert!(
        list.status.success() && out.contains("Virtual PCD 00 00"),
        "{out}"
    );
    let atr = pcsc.run("opensc-tool", &["-r", "0", "-a"]);
    assert!(
        text(&atr)
            .to_lowercase()
            .contains("3b:88:80:01:4b:41:47:49:2d:53:49:4d"),
        "{}",
        text(&atr)
    );
    // SELECT with an empty AID selects the ISD: 90 00 and its FCI (6F … 84 08 A000000151000000).
    let sel = pcsc.run("opensc-tool", &["-r", "0", "-s", "00A4040000"]);
    let out = text(&sel);
    assert!(out.contains("SW1=0x90, SW2=0x00"), "{out}\n{}", pcsc.logs());
    assert!(
        out.contains("6F") && out.contains("A0 00 00 01 51 00 00 00"),
        "{out}"
    );
}

#[test]
fn kagi_lists_readers_and_manages_the_card_over_pcsc() {
    let pcsc = PrivatePcsc::start(2);
    let readers = pcsc.kagi(&["readers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&readers.stdout).expect("readers json");
    assert_eq!(v["schema_version"], 1);
    let names = strings(&v, "readers", "name");
    assert!(
        names.contains(&"Virtual PCD 00 00") && names.contains(&"Virtual PCD 00 01"),
        "{names:?}"
    );
    for slot in ["Virtual PCD 00 00", "PCD 00 01"] {
        let list = pcsc.kagi(&["gp", "list", "--reader", slot, "--test-keys", "--json"]);
        assert!(list.status.success(), "{}\n{}", text(&list), pcsc.logs());
        let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(v["security_domain"], "A000000151000000");
        assert_eq!(v["session"]["level"], "33");
        assert_eq!(v["session"]["challenge_verified"], true);
        let aids = strings(&v, "registry", "aid");
        assert_eq!(
            aids,
            [
                "A000000151000000",
                "F04B41474901",
                "A0000001515350",
                "F04B414749"
            ]
        );
        // On a real reader the published test keys come with a loud warning.
        assert!(String::from_utf8_lossy(&list.stderr).contains("WARNING"));
    }
    // Card management works over PC/SC as it does in process.
    for args in [
        &[
            "gp",
            "load",
            "--reader",
            "PCD 00 01",
            "--test-keys",
            "--package",
            "F001020304",
            "--module",
            "F00102030401=kagi.echo",
        ][..],
        &[
            "gp",
            "install",
            "--reader",
            "PCD 00 01",
            "--test-keys",
            "--package",
            "F001020304",
            "--module",
            "F00102030401",
        ][..],
        &[
            "gp",
            "store-data",
            "--reader",
            "PCD 00 01",
            "--test-keys",
            "--app",
            "F00102030401",
            "--data",
            "6B616769",
        ][..],
    ] {
        let o = pcsc.kagi(args);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            text(&o),
            pcsc.logs()
        );
    }
    let r = pcsc.kagi(&[
        "apdu",
        "--reader",
        "PCD 00 01",
        "00A4040006F00102030401",
        "8014000000",
    ]);
    assert!(text(&r).contains("6B616769 9000"), "{}", text(&r));
    // Ambiguous and unknown reader names are refused with the list of readers.
    let amb = pcsc.kagi(&["gp", "info", "--reader", "Virtual"]);
    assert!(
        !amb.status.success()
            && text(&amb).contains(
                "'Virtual' matches several readers (0: Virtual PCD 00 00, 1: Virtual PCD 00 01): \
                 give more of the name, or an index"
            ),
        "{}",
        text(&amb)
    );
    let none = pcsc.kagi(&["gp", "info", "--reader", "Nope"]);
    assert!(
        !none.status.success() && text(&none).contains("Virtual PCD 00 00"),
        "{}",
        text(&none)
    );
}

#[test]
fn long_commands_cross_pcscd_chained_or_extended() {
    let pcsc = PrivatePcsc::start(1);
    let data = "5A".repeat(700);
    let echo = format!("8010000000{:04X}{data}0000", 700);
    for extra in [&[][..], &["--extended"][..]] {
        let mut args = vec![
            "apdu",
            "--reader",
            "0",
            "--json",
            "00A4040006F04B41474901",
            &echo,
        ];
        args.extend_from_slice(extra);
        let out = pcsc.kagi(&args);
        assert!(out.status.success(), "{}\n{}", text(&out), pcsc.logs());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["responses"][1]["sw"], "9000");
        assert_eq!(v["responses"][1]["data"].as_str().unwrap(), data);
    }
    // Without --extended the 700 bytes went as a chain of short APDUs (CLA bit 10), and the
    // long answer came back through GET RESPONSE: pcscd's log shows both.
    let log = std::fs::read_to_string(pcsc.work.join("pcscd.log")).unwrap_or_default();
    assert!(
        log.contains("APDU: 90 10 00 00 FF"),
        "no chained APDU in the pcscd log"
    );
    assert!(
        log.contains("APDU: 00 C0 00 00"),
        "no GET RESPONSE in the pcscd log"
    );
}

/// Run in a child process with `PCSCLITE_CSOCK_NAME` set (see `a_reset_by_another_application_is_reported`).
#[test]
#[ignore = "runs only as the child of a_reset_by_another_application_is_reported"]
fn child_reset_scenario() {
    use card_wire::Transport;
    use card_wire::transport::TransportError;
    use kagi::channel::{ApduChannel, CardChannel};
    use kagi::pcsc_transport::{PcscTransport, Share};
    let t = PcscTransport::connect("Virtual PCD 00 00", Share::Shared).expect("connect");
    let mut ch = CardChannel::new(t);
    kagi::gp::select(&mut ch, &applet_sim::echo::ECHO_AID).expect("select echo");
    let echo = card_wire::apdu::Command::new(0x80, 0x10, 0, 0)
        .with_data(vec![1, 2, 3])
        .unwrap()
        .with_le(256)
        .unwrap();
    assert_eq!(ch.transmit(&echo).unwrap().data, vec![1, 2, 3]);
    // Another application resets the card behind our back.
    let socket = std::env::var("PCSCLITE_CSOCK_NAME").unwrap();
    let other = std::process::Command::new("opensc-tool")
        .args(["-r", "0", "--reset", "warm"])
        .env("PCSCLITE_CSOCK_NAME", socket)
        .output()
        .unwrap();
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    // Our next command is not sent into the wrong context: we learn of the reset instead.
    match ch.transmit(&echo) {
        Err(kagi::Error::Transport(TransportError::CardReset(_))) => {}
        other => panic!("expected CardReset, got {other:?}"),
    }
    assert!(ch.transport_mut().take_reset_notice());
    assert!(!ch.transport_mut().take_reset_notice());
    // After re-selecting, work goes on over the reconnected handle.
    kagi::gp::select(&mut ch, &applet_sim::echo::ECHO_AID).expect("re-select");
    assert_eq!(ch.transmit(&echo).unwrap().data, vec![1, 2, 3]);
    println!("CHILD-OK");
}

#[test]
fn a_reset_by_another_application_is_reported() {
    let pcsc = PrivatePcsc::start(1);
    let me = std::env::current_exe().unwrap();
    let out = pcsc.run(
        me.to_str().unwrap(),
        &[
            "--exact",
            "child_reset_scenario",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ],
    );
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("CHILD-OK"),
        "{t}\n{}",
        pcsc.logs()
    );
}

#[test]
fn more_than_two_readers_each_with_its_own_card() {
    let pcsc = PrivatePcsc::start(5);
    let v: serde_json::Value =
        serde_json::from_slice(&pcsc.kagi(&["readers", "--json"]).stdout).unwrap();
    let names = strings(&v, "readers", "name");
    for i in 0..5 {
        assert!(
            names.contains(&support::reader_name(i).as_str()),
            "{names:?}"
        );
    }
    // Each reader reaches its own card: change one, the others stay as they were.
    let last = support::reader_name(4);
    let o = pcsc.kagi(&[
        "gp",
        "set-status",
        "--reader",
        &last,
        "--test-keys",
        "--app",
        "F04B41474901",
        "--state",
        "lock",
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), pcsc.logs());
    for i in 0..5 {
        let r = pcsc.kagi(&[
            "apdu",
            "--reader",
            &support::reader_name(i),
            "00A4040006F04B41474901",
        ]);
        let locked = text(&r).contains("6A82");
        assert_eq!(locked, i == 4, "reader {i}: {}", text(&r));
    }
}

#[test]
fn card_removal_and_insertion_reach_pcscd() {
    let pcsc = PrivatePcsc::start(1);
    let present = || {
        let v: serde_json::Value =
            serde_json::from_slice(&pcsc.kagi(&["readers", "--json"]).stdout).unwrap();
        v["readers"][0]["card_present"].as_bool().unwrap()
    };
    assert!(present());
    pcsc.control("remove 0");
    let start = std::time::Instant::now();
    while present() {
        assert!(
            start.elapsed().as_secs() < 10,
            "pcscd never saw the removal\n{}",
            pcsc.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = pcsc.kagi(&["gp", "info", "--reader", "0"]);
    assert!(
        !o.status.success() && text(&o).contains("no card"),
        "{}",
        text(&o)
    );
    pcsc.control("insert 0");
    let w = pcsc.kagi(&["readers", "--wait", "0", "--timeout-ms", "10000"]);
    assert!(w.status.success(), "{}", text(&w));
    let o = pcsc.kagi(&["gp", "info", "--reader", "0"]);
    assert!(o.status.success(), "{}", text(&o));
}
