//! Generates the API token table (`$OUT_DIR/api_table.rs`) from `data/api-tokens-3.0.5.json`
//! (the Java Card 3.0.5u3 kit's export files, dumped) and `data/gp-api-tokens-1.6.json` (the
//! GlobalPlatform Card API 1.6 export file, dumped the same way; `data/exp2json.py`): no token
//! is typed by hand.

use std::fmt::Write;

#[path = "src/descriptor.rs"]
#[allow(dead_code, unreachable_pub)]
mod descriptor;

fn main() {
    // The Java Card API, then the GlobalPlatform Card API (`org.globalplatform`).
    let mut packages = Vec::new();
    for path in ["data/api-tokens-3.0.5.json", "data/gp-api-tokens-1.6.json"] {
        println!("cargo:rerun-if-changed={path}");
        let text = std::fs::read_to_string(path).expect("api token table");
        let v: serde_json::Value = serde_json::from_str(&text).expect("api token table is JSON");
        packages.extend(v["packages"].as_array().expect("packages").iter().cloned());
    }
    let v = serde_json::json!({ "packages": packages });
    let mut out = String::from(
        "/// The API packages (generated from data/api-tokens-3.0.5.json and data/gp-api-tokens-1.6.json).\npub static PACKAGES: &[ApiPackage] = &[\n",
    );
    let mut classes = String::from(
        "/// Every API class, package by package (generated).\npub static CLASSES: &[ApiClass] = &[\n",
    );
    let mut n = 0usize;
    for (pi, p) in v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .enumerate()
    {
        let aid = p["aid"].as_str().expect("aid");
        let bytes: Vec<String> = (0..aid.len() / 2)
            .map(|i| format!("0x{}", &aid[2 * i..2 * i + 2]))
            .collect();
        let (major, minor) = p["version"]
            .as_str()
            .expect("version")
            .split_once('.')
            .expect("m.n");
        let cs = p["classes"].as_array().expect("classes");
        writeln!(
            out,
            "    ApiPackage {{ name: {:?}, aid: &[{}], major: {major}, minor: {minor}, first_class: {n}, class_count: {} }},",
            p["name"].as_str().expect("name"),
            bytes.join(", "),
            cs.len()
        )
        .unwrap();
        for c in cs {
            let flags = c["flags"].as_str().unwrap_or("");
            let strs = |k: &str| -> String {
                c[k].as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| format!("{:?}", s.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            let mut methods = String::new();
            for m in c["methods"].as_array().into_iter().flatten() {
                let mf = m["flags"].as_str().unwrap_or("");
                let name = m["name"].as_str().unwrap_or("");
                let is_static = mf.split_whitespace().any(|w| w == "static") || name == "<init>";
                write!(
                    methods,
                    "ApiMethod {{ name: {:?}, descriptor: {:?}, token: {}, is_static: {is_static}, words: {} }}, ",
                    name,
                    m["descriptor"].as_str().unwrap_or(""),
                    m["token"].as_u64().unwrap_or(255),
                    descriptor::arg_words(m["descriptor"].as_str().unwrap_or("")),
                )
                .unwrap();
            }
            let mut fields = String::new();
            for f in c["fields"].as_array().into_iter().flatten() {
                let value = match f.get("value").and_then(|x| x.as_i64()) {
                    Some(x) => format!("Some({x})"),
                    None => "None".into(),
                };
                write!(
                    fields,
                    "ApiField {{ name: {:?}, token: {}, value: {value} }}, ",
                    f["name"].as_str().unwrap_or(""),
                    f["token"].as_u64().unwrap_or(255)
                )
                .unwrap();
            }
            writeln!(
                classes,
                "    ApiClass {{ package: {pi}, name: {:?}, token: {}, is_interface: {}, supers: &[{}], interfaces: &[{}], methods: &[{methods}], fields: &[{fields}] }},",
                c["name"].as_str().expect("class name"),
                c["token"].as_u64().expect("class token"),
                flags.split_whitespace().any(|w| w == "interface"),
                strs("supers"),
                strs("interfaces"),
            )
            .unwrap();
            n += 1;
        }
    }
    out.push_str("];\n");
    classes.push_str("];\n");
    out.push_str(&classes);
    let dest =
        std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("api_table.rs");
    std::fs::write(dest, out).expect("write api_table.rs");
}
