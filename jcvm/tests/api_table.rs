//! The API token table generated at build time (from the kit's export files, dumped to JSON)
//! agrees with the converter's own listing of IsoApplet (`data/isoapplet-keyimport.jca`):
//! every external static method and class reference there, named in the listing's comments,
//! has the same package, class token and method token in kagi's table.

mod common;
use kagi_jcvm::api;

#[test]
fn generated_tokens_match_the_converters_listing() {
    let cap = common::cap("data/isoapplet-keyimport.cap");
    let jca = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/isoapplet-keyimport.jca"),
    )
    .unwrap();
    let pkgs: Vec<usize> = cap
        .imports()
        .iter()
        .map(|i| api::package_by_aid(&i.aid).expect("an API package"))
        .collect();
    let mut checked = 0;
    for line in jca.lines().map(str::trim) {
        // staticMethodRef 1.16.0([BS[BSS)B;		// javacard/framework/Util.arrayCompare([BS[BSS)B
        let Some(rest) = line.strip_prefix("staticMethodRef ") else {
            continue;
        };
        let Some((refs, comment)) = rest.split_once("//") else {
            continue;
        };
        let toks: Vec<u8> = match refs
            .split('(')
            .next()
            .unwrap()
            .split('.')
            .map(str::parse)
            .collect()
        {
            Ok(t) => t,
            Err(_) => continue, // an internal reference
        };
        let comment = comment.trim();
        let (path, desc) = comment.split_at(comment.find('(').unwrap());
        let (class_path, method) = path.rsplit_once('.').unwrap();
        let class_name = class_path.replace('/', ".");
        let class = api::class_by_token(pkgs[usize::from(toks[0])], toks[1]).expect("class token");
        assert_eq!(api::CLASSES[class].name, class_name, "{line}");
        let m = api::method(class, true, toks[2]).expect("method token");
        assert_eq!((m.name, m.descriptor), (method, desc), "{line}");
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} references checked");
    // The runtime's entry points into an applet, by name.
    assert_eq!(
        api::virtual_token("javacard.framework.Applet", "register", "()V"),
        Some(1)
    );
}
