#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
use super::*;

pub(crate) const MINI_ISF: &str = r#"{
 "metadata": {"format": "6.2.0", "producer": {"name": "test", "version": "1.0.0"}},
 "base_types": {"int": {"size": 4, "signed": true, "kind": "int", "endian": "little"},
                "unsigned int": {"size": 4, "signed": false, "kind": "int", "endian": "little"},
                "char": {"size": 1, "signed": true, "kind": "char", "endian": "little"},
                "pointer": {"size": 8, "signed": false, "kind": "int", "endian": "little"}},
 "user_types": {
   "kuid_t": {"kind": "struct", "size": 4, "fields": {"val": {"offset": 0, "type": {"kind": "base", "name": "unsigned int"}}}},
   "cred": {"kind": "struct", "size": 16, "fields": {"uid": {"offset": 4, "type": {"kind": "struct", "name": "kuid_t"}},
      "flags": {"offset": 8, "type": {"kind": "bitfield", "bit_position": 3, "bit_length": 2, "type": {"kind": "base", "name": "unsigned int"}}}}},
   "mm_struct": {"kind": "struct", "size": 64, "fields": {"unnamed_field_0": {"anonymous": true, "offset": 0, "type": {"kind": "struct", "name": "unnamed_1"}}}},
   "unnamed_1": {"kind": "struct", "size": 64, "fields": {"pgd": {"offset": 8, "type": {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}},
      "unnamed_field_1": {"anonymous": true, "offset": 16, "type": {"kind": "union", "name": "unnamed_2"}}}},
   "unnamed_2": {"kind": "union", "size": 8, "fields": {"arg_start": {"offset": 4, "type": {"kind": "base", "name": "unsigned int"}}}},
   "unused": {"kind": "struct", "size": 1, "fields": {}}
 },
 "enums": {"mod_mem_type": {"size": 4, "base": "unsigned int", "constants": {"MOD_TEXT": 0, "MOD_DATA": 1}}},
 "symbols": {"init_task": {"address": 18446744071606217280, "type": {"kind": "struct", "name": "task_struct"}},
             "linux_banner": {"address": 18446744071597070592, "constant_data": "TGludXggdmVyc2lvbiA2LjEK"},
             "other": {"address": 1}}
}"#;

#[test]
fn isf_selective_and_flattened() {
    let p = Profile::load(MINI_ISF.as_bytes(), "mini").unwrap();
    assert_eq!(p.offset("mm_struct", "pgd").unwrap(), 8);
    assert_eq!(p.offset("mm_struct", "arg_start").unwrap(), 20);
    assert!(!p.structs.contains_key("unused"));
    assert!(!p.structs.contains_key("unnamed_1"));
    assert!(!p.symbols.contains_key("other"));
    assert_eq!(p.symbol("init_task").unwrap(), 0xffff_ffff_82a1_aa40);
    assert_eq!(p.banner.as_deref(), Some(&b"Linux version 6.1\n"[..]));
    let uid = p.field("cred", "uid").unwrap();
    assert_eq!(p.int_layout(&uid.ty).unwrap().size, 4);
    let fl = p.int_layout(&p.field("cred", "flags").unwrap().ty).unwrap();
    assert_eq!(fl.decode(0b11000), 3);
    assert_eq!(p.enum_value("mod_mem_type", "MOD_DATA"), Some(1));
    assert_eq!(
        p.field("cred", "nope").unwrap_err().to_string(),
        "profile mini has no field cred.nope"
    );
}

#[test]
fn compressed_and_cache_roundtrip() {
    use std::io::Write;
    let p = Profile::load(MINI_ISF.as_bytes(), "mini").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(MINI_ISF.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(Profile::load(&gz, "mini").unwrap(), p);
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(MINI_ISF.as_bytes()).unwrap();
    let xz = xz.finish().unwrap();
    assert_eq!(Profile::load(&xz, "mini").unwrap(), p);
    // Serialised straight from the model, byte for byte the `Value` route.
    assert_eq!(
        p.to_cache_bytes(),
        serde_json::to_vec(&p.to_isf_json()).unwrap()
    );
    let cached = Profile::from_cache_bytes(&p.to_cache_bytes(), "mini").unwrap();
    assert_eq!(cached.structs, p.structs);
    assert_eq!(cached.banner, p.banner);
    assert_eq!(cached.symbols, p.symbols);
    assert_ne!(cache_key(MINI_ISF.as_bytes()), cache_key(&gz));
}

/// MINI_ISF with more symbols, laid out as dwarf2json does: two-space
/// indents, `symbols` last.
fn dwarf2json_layout() -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        metadata: &'a serde_json::Value,
        base_types: &'a serde_json::Value,
        user_types: &'a serde_json::Value,
        enums: &'a serde_json::Value,
        symbols: &'a serde_json::Value,
    }
    let mut v: serde_json::Value = serde_json::from_str(MINI_ISF).unwrap();
    for i in 0..20 {
        v["symbols"][format!("s{i:02}")] = serde_json::json!({"address": i});
    }
    serde_json::to_vec_pretty(&Doc {
        metadata: &v["metadata"],
        base_types: &v["base_types"],
        user_types: &v["user_types"],
        enums: &v["enums"],
        symbols: &v["symbols"],
    })
    .unwrap()
}

#[test]
fn multi_block_xz_loads_as_the_plain_text() {
    use liblzma::stream::{Action, Check, Status, Stream};
    let text = dwarf2json_layout();
    // Two blocks (a full flush ends one), the second inside `symbols`, so
    // the layout reader stitches the two blocks' scans.
    let mut enc = Stream::new_easy_encoder(1, Check::Crc64).unwrap();
    let mut xz = Vec::with_capacity(text.len() + 4096);
    let cut = text.len() - 300;
    let (mut at, mut action) = (0, Action::FullFlush);
    for end in [cut, text.len()] {
        loop {
            let before = enc.total_in() as usize;
            let st = enc.process_vec(&text[at..end], &mut xz, action).unwrap();
            at += enc.total_in() as usize - before;
            if st == Status::StreamEnd {
                break;
            }
        }
        action = Action::Finish;
    }
    assert_eq!(at, text.len());
    let plain = Profile::load(&text, "mini").unwrap();
    assert_eq!(Profile::load(&xz, "mini").unwrap(), plain);
    assert_eq!(plain.symbols.len(), 2);
}

#[test]
fn rekall_roundtrip_same_model() {
    let p = Profile::load(MINI_ISF.as_bytes(), "mini").unwrap();
    let rk = serde_json::to_vec(&p.to_rekall_json()).unwrap();
    let q = Profile::load(&rk, "mini").unwrap();
    assert_eq!(q.format, ProfileFormat::Rekall);
    assert_eq!(q.structs, p.structs);
    assert_eq!(
        q.symbol("init_task").unwrap(),
        p.symbol("init_task").unwrap()
    );
    assert_eq!(q.enum_value("mod_mem_type", "MOD_DATA"), Some(1));
}

#[test]
fn rekall_handwritten_anonymous() {
    let rk = r#"{"$METADATA": {"ProfileClass": "Linux", "arch": "AMD64"},
      "$CONSTANTS": {"init_task": 281472873376320},
      "$STRUCTS": {"mm_struct": [64, {"u1": [0, ["__unnamed_7"]]}],
                   "__unnamed_7": [64, {"pgd": [8, ["Pointer", {"target": "Void"}]]}],
                   "task_struct": [100, {"comm": [10, ["Array", {"count": 16, "target": "char"}]]}]},
      "$ENUMS": {"mod_mem_type": {"0": "MOD_TEXT"}}}"#;
    let q = Profile::load(rk.as_bytes(), "rk").unwrap();
    assert_eq!(q.offset("mm_struct", "pgd").unwrap(), 8);
    assert_eq!(q.symbol("init_task").unwrap(), 0xffff_ffff_82a1_aa40);
    assert_eq!(
        q.type_size(&q.field("task_struct", "comm").unwrap().ty),
        Some(16)
    );
}

#[test]
fn errors_are_one_line_and_explain() {
    let e = Profile::load(b"{\"a\": 1}", "x").unwrap_err();
    assert!(e.to_string().contains("found keys a"), "{e}");
    let e = Profile::load(b"{\"metadata\": ", "x").unwrap_err();
    assert!(matches!(e, ProfileError::Json(_)));
    let e = Profile::load(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2], "x").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot decompress profile: expected valid xz"),
        "{e}"
    );
    let bad = MINI_ISF.replace("\"6.2.0\"", "\"9.0.0\"");
    assert!(
        Profile::load(bad.as_bytes(), "x")
            .unwrap_err()
            .to_string()
            .contains("format 9.0.0")
    );
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn anonymous_types_are_parsed_when_a_kept_type_reaches_them() {
    // A damaged anonymous type nothing kept refers to is skipped like any
    // unselected type; one that a kept type reaches is an error naming it.
    let unreached = MINI_ISF.replace(
        r#""unused": {"kind": "struct", "size": 1, "fields": {}}"#,
        r#""unused": {"kind": "struct", "size": 1, "fields": {}}, "unnamed_9": {"size": "x"}"#,
    );
    assert_eq!(
        Profile::load(unreached.as_bytes(), "mini").unwrap(),
        Profile::load(MINI_ISF.as_bytes(), "mini").unwrap()
    );
    let reached = MINI_ISF.replace(
        r#""unnamed_2": {"kind": "union", "size": 8,"#,
        r#""unnamed_2": {"kind": "union", "size": "8","#,
    );
    assert_ne!(reached, MINI_ISF);
    let e = Profile::load(reached.as_bytes(), "mini")
        .unwrap_err()
        .to_string();
    assert!(e.contains("user type unnamed_2"), "{e}");
}

fn one_pass(text: &[u8], sel: &Selection) -> Profile {
    isf::build(parse(text, sel).unwrap(), "mini", sel).unwrap()
}

#[test]
fn reading_by_layout_equals_one_pass() {
    let text = dwarf2json_layout();
    let sel = Selection::PLUGINS;
    let names = layout::Names::new(&sel).unwrap();
    let expect = one_pass(&text, &sel);
    assert_eq!(expect.symbols.len(), 2);
    let raw = layout::read_text(&text, &names).unwrap();
    assert_eq!(isf::build(raw, "mini", &sel).unwrap(), expect);
    // Blocks ending everywhere after base_types (a block starting inside
    // it sends the file to the whole-document path): in names, markers,
    // values, member lines; and three blocks.
    let from = memchr::memmem::find(&text, b"\"user_types\"").unwrap() - 8;
    let mut cuts: Vec<Vec<usize>> = (from..text.len() - 1).step_by(3).map(|c| vec![c]).collect();
    cuts.push(vec![from + 40, text.len() - 40]);
    cuts.push(vec![from + 1, from + 2, from + 3]);
    for cut in cuts {
        let xz = xz_with_blocks_ending_at(&text, &cut);
        let raw = layout::read_xz(&xz, &names).unwrap_or_else(|| panic!("cut at {cut:?}"));
        assert_eq!(
            isf::build(raw, "mini", &sel).unwrap(),
            expect,
            "cut at {cut:?}"
        );
    }
    let base = memchr::memmem::find(&text, b"\"char\"").unwrap();
    let xz = xz_with_blocks_ending_at(&text, &[base + 2]);
    assert!(layout::read_xz(&xz, &names).is_none());
    assert_eq!(Profile::load(&xz, "mini").unwrap(), expect);
}

fn xz_with_blocks_ending_at(text: &[u8], cuts: &[usize]) -> Vec<u8> {
    use liblzma::stream::{Action, Check, Status, Stream};
    let mut enc = Stream::new_easy_encoder(0, Check::Crc64).unwrap();
    let mut xz = Vec::with_capacity(text.len() + 4096);
    let mut at = 0;
    for &end in cuts.iter().chain([&text.len()]) {
        let action = if end == text.len() {
            Action::Finish
        } else {
            Action::FullFlush
        };
        loop {
            xz.reserve(4096);
            let before = enc.total_in() as usize;
            let st = enc.process_vec(&text[at..end], &mut xz, action).unwrap();
            at += enc.total_in() as usize - before;
            if st == Status::StreamEnd {
                break;
            }
        }
    }
    xz
}

#[test]
fn what_is_not_laid_out_so_is_parsed_whole() {
    let sel = Selection::PLUGINS;
    let names = layout::Names::new(&sel).unwrap();
    let text = String::from_utf8(dwarf2json_layout()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let four = {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&v, &mut ser).unwrap();
        String::from_utf8(out).unwrap()
    };
    let inner = text.replacen(
        "\"init_task\": {\n      \"address\"",
        "\"init_task\": {\n    \"address\"",
        1,
    );
    assert_ne!(inner, text);
    for (i, doc) in [
        serde_json::to_string(&v).unwrap(),
        four,
        text.replacen("\"symbols\"", "\"$STRUCTS\"", 1),
        text.replacen("\"init_task\"", "\"init\\u005ftask\"", 1),
        format!("{text}x"),
        text.replacen("},\n  \"enums\"", "}\n  \"enums\"", 1),
        inner,
        text[..text.len() - 2].to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(layout::read_text(doc.as_bytes(), &names).is_none(), "{i}");
        // Parsed whole instead: an error where one pass fails.
        if parse(doc.as_bytes(), &sel).is_err() {
            assert!(Profile::load(doc.as_bytes(), "mini").is_err(), "{doc}");
        }
    }
}

/// A cached profile is kept per selection: a selection that reads one more
/// type (a new check) has another tag, so an old cache is not served.
#[test]
fn selection_tags_follow_what_they_select() {
    let plugins = Selection::PLUGINS.tag();
    let integrity = Selection::INTEGRITY.tag();
    assert!(
        plugins.starts_with("plugins-") && plugins.len() == 16,
        "{plugins}"
    );
    assert!(integrity.starts_with("integrity-"), "{integrity}");
    assert_eq!(Selection::All.tag(), "all");
    assert_eq!(Selection::INTEGRITY.tag(), integrity);
    let one_more = Selection::Only {
        types: &["task_struct", "list_head", "trace_kprobe"],
        symbols: &[],
        enums: &[],
        all_symbols: true,
    };
    let fewer = Selection::Only {
        types: &["task_struct", "list_head"],
        symbols: &[],
        enums: &[],
        all_symbols: true,
    };
    assert_ne!(one_more.tag(), fewer.tag());
}
