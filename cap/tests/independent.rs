//! Independent check: for every real CAP file (the committed copies, and every CAP under
//! `../shared/javacard/` when it is beside the clone), the load file data block kagi-cap
//! builds equals the one `independent_lfdb.py` computes from the JCVM specification's
//! component order with nothing but Python's `zipfile`; the script also checks each
//! component's tag and u2 size, and reads package, applets and imports on its own.

use kagi_cap::{CapFile, Component, HashAlg};
use std::path::{Path, PathBuf};
use std::process::Command;

fn caps_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            caps_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "cap") {
            out.push(p);
        }
    }
}

fn all_caps() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    caps_under(&root.join("tests/data"), &mut v);
    // CI keeps ../shared beside the clone; a worktree may sit one level deeper.
    let before = v.len();
    for shared in ["../../shared/javacard", "../../../shared/javacard"] {
        caps_under(&root.join(shared), &mut v);
        if v.len() > before {
            break;
        }
    }
    if v.len() == before {
        eprintln!("note: ../shared/javacard not found; checking the committed copies only");
    }
    v.sort();
    v
}

fn independent(path: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent_lfdb.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn load_file_data_block_matches_an_independent_implementation() {
    let caps = all_caps();
    assert!(caps.len() >= 3, "expected the three committed CAP files");
    for path in caps {
        let want = independent(&path);
        let cap = CapFile::from_path(&path).unwrap();
        let name = path.display();
        assert_eq!(
            hex::encode_upper(cap.load_file_data_block(true)),
            want["block"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode_upper(cap.load_file_data_block(false)),
            want["block_nodesc"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode_upper(cap.package_aid()),
            want["package"],
            "{name}"
        );
        let (major, minor) = cap.version();
        assert_eq!(format!("{major}.{minor}"), want["version"], "{name}");
        let applets: Vec<String> = cap
            .applets()
            .iter()
            .map(|a| hex::encode_upper(&a.aid))
            .collect();
        assert_eq!(serde_json::json!(applets), want["applets"], "{name}");
        let imports: Vec<serde_json::Value> = cap
            .imports()
            .iter()
            .map(|p| serde_json::json!({"aid": hex::encode_upper(&p.aid), "version": p.version()}))
            .collect();
        assert_eq!(serde_json::json!(imports), want["imports"], "{name}");
        for (c, size) in cap.component_sizes() {
            assert_eq!(want["sizes"][c.to_string()], size, "{name} {c}");
        }
        // The load file is C4 ‖ BER length ‖ block, and the hashes cover the block alone.
        let block = cap.load_file_data_block(true);
        let lf = cap.load_file(true);
        assert_eq!(lf[0], 0xC4);
        assert_eq!(kagi_cap::unwrap_c4(&lf), Some(block.as_slice()));
        assert_eq!(cap.hash(HashAlg::Sha256, true).len(), 32);
        assert_eq!(cap.hash(HashAlg::Sha1, true).len(), 20);
        assert!(cap.hash(HashAlg::None, true).is_empty());
        // The .ijc form (the block itself) reads back to the same package.
        let ijc = CapFile::from_ijc(&block).unwrap();
        assert_eq!(ijc.load_file_data_block(true), block);
        assert!(cap.component(Component::Debug).is_none() || !block.is_empty());
    }
}

#[test]
fn facts_from_the_javacard_readme() {
    // Values from ../shared/javacard/README.md and the GPPro file name, not from kagi-cap.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let iso = CapFile::from_path(&root.join("isoapplet-v0/isoapplet.cap")).unwrap();
    assert_eq!(
        hex::encode_upper(iso.package_aid()),
        "F276A288BCFBA69D34F310"
    );
    assert_eq!(
        hex::encode_upper(&iso.applets()[0].aid),
        "F276A288BCFBA69D34F31001"
    );
    let empty =
        CapFile::from_path(&root.join("gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap")).unwrap();
    assert_eq!(hex::encode_upper(empty.package_aid()), "0102030405");
    assert_eq!(empty.cap_version(), (2, 1));
    // SHA-256 of the block as `sha256sum` computes it over the python script's bytes.
    let want = independent(&root.join("gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap"));
    let block = hex::decode(want["block"].as_str().unwrap()).unwrap();
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&block)?;
            c.wait_with_output()
        })
        .unwrap();
    let sum = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        hex::encode(empty.hash(HashAlg::Sha256, true)),
        sum.split_whitespace().next().unwrap()
    );
}

#[test]
fn deflated_cap_reads_like_the_stored_one() {
    // Real CAPs store their components; converters may deflate them. Python's zipfile
    // recompresses a copy with deflate.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/isoapplet-v0/isoapplet.cap");
    let dst = std::env::temp_dir().join(format!("kagi-cap-deflated-{}.cap", std::process::id()));
    let py = "import sys, zipfile\nsrc = zipfile.ZipFile(sys.argv[1])\nwith zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as d:\n    for n in src.namelist():\n        d.writestr(n, src.read(n))\n";
    let st = Command::new("python3")
        .args(["-c", py])
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    let deflated = std::fs::read(&dst).unwrap();
    let _ = std::fs::remove_file(&dst);
    let stored = std::fs::read(&src).unwrap();
    assert_ne!(deflated, stored);
    assert_eq!(
        CapFile::from_bytes(&deflated)
            .unwrap()
            .load_file_data_block(true),
        CapFile::from_bytes(&stored)
            .unwrap()
            .load_file_data_block(true)
    );
}
