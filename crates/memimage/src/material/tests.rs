#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;

/// BTF writer for tests: types as (name, info, size_or_type, extra words).
struct W {
    strings: Vec<u8>,
    types: Vec<u8>,
}

impl W {
    fn new() -> Self {
        W {
            strings: vec![0],
            types: Vec::new(),
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn w(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }
    fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32) {
        let n = self.s(name);
        self.w(n);
        self.w(u32::from(kflag) << 31 | kind << 24 | vlen);
        self.w(st);
    }
    fn member(&mut self, name: &str, ty: u32, off: u32) {
        let n = self.s(name);
        self.w(n);
        self.w(ty);
        self.w(off);
    }
    fn finish(self) -> Vec<u8> {
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// 1 int, 2 unsigned int, 3 list_head, 4 ptr list_head, 5 anon struct {pid},
/// 6 task_struct { tasks; <anon>; comm[16]; flags:3 }, 7 char, 8 array char[16],
/// 9 anon struct {val}, 10 typedef kuid_t, 11 mm_struct { uid }.
fn kernel_btf() -> Vec<u8> {
    let mut w = W::new();
    w.ty("int", 1, 0, false, 4);
    w.w(1 << 24 | 32);
    w.ty("unsigned int", 1, 0, false, 4);
    w.w(32);
    w.ty("list_head", 4, 2, false, 16);
    w.member("next", 4, 0);
    w.member("prev", 4, 64);
    w.ty("", 2, 0, false, 3);
    w.ty("", 4, 1, false, 4);
    w.member("pid", 1, 0);
    w.ty("task_struct", 4, 4, true, 64);
    w.member("tasks", 3, 0);
    w.member("", 5, 128);
    w.member("comm", 8, 160);
    w.member("flags", 2, 3 << 24 | (288 + 9));
    w.ty("char", 1, 0, false, 1);
    w.w(2 << 24 | 8);
    w.ty("", 3, 0, false, 0);
    w.w(7);
    w.w(1);
    w.w(16);
    w.ty("", 4, 1, false, 4);
    w.member("val", 2, 0);
    w.ty("kuid_t", 8, 0, false, 9);
    w.ty("mm_struct", 4, 1, false, 8);
    w.member("uid", 10, 32);
    w.finish()
}

const KALLSYMS: &[u8] = b"ffffffffa0000000 T _text\nffffffffa1a1aa40 D init_task\n\
ffffffffa1b00000 D linux_banner\n0000000000031c40 A runqueues\n";

#[test]
fn builds_a_profile_from_btf_and_kallsyms() {
    let btf = kernel_btf();
    let m = Material {
        btf: Some(&btf),
        kallsyms: Some(KALLSYMS),
        iomem: Some(b"  19e00000-1ac01d31 : Kernel code\n"),
        version: Some(b"Linux version 6.1.0 (x@y) #1\n"),
    };
    let (doc, d) = m.isf(&Selection::All).unwrap();
    assert_eq!(d.slide, 0x1f00_0000);
    assert_eq!(d.kernel_code, Some(0x19e0_0000));
    let task = &doc["user_types"]["task_struct"];
    assert_eq!(task["size"], 64);
    assert_eq!(task["fields"]["unnamed_field_0"]["anonymous"], true);
    assert_eq!(task["fields"]["comm"]["offset"], 20);
    assert_eq!(task["fields"]["comm"]["type"]["count"], 16);
    let flags = &task["fields"]["flags"];
    assert_eq!(flags["offset"], 37);
    assert_eq!(flags["type"]["kind"], "bitfield");
    assert_eq!(flags["type"]["bit_position"], 1);
    assert_eq!(flags["type"]["bit_length"], 3);
    assert_eq!(doc["user_types"]["kuid_t"]["fields"]["val"]["offset"], 0);
    assert_eq!(
        doc["user_types"]["mm_struct"]["fields"]["uid"]["type"]["name"],
        "kuid_t"
    );
    assert_eq!(
        doc["symbols"]["init_task"]["address"],
        0xffff_ffff_82a1_aa40u64
    );
    assert_eq!(doc["symbols"]["init_task"]["type"]["name"], "task_struct");
    assert_eq!(doc["symbols"]["runqueues"]["address"], 0x31c40);
    assert_eq!(doc["base_types"]["char"]["kind"], "char");
    assert_eq!(doc["base_types"]["pointer"]["size"], 8);

    // Through the ISF loader: anonymous members flattened, banner kept.
    let (p, _) = m.profile("material", &Selection::PLUGINS).unwrap();
    assert_eq!(p.offset("task_struct", "pid").unwrap(), 16);
    assert_eq!(p.offset("task_struct", "tasks").unwrap(), 0);
    assert_eq!(p.symbol("init_task").unwrap(), 0xffff_ffff_82a1_aa40);
    assert_eq!(
        p.banner.as_deref(),
        Some(&b"Linux version 6.1.0 (x@y) #1\n\0"[..])
    );
    let uid = p.field("mm_struct", "uid").unwrap();
    assert_eq!(p.int_layout(&uid.ty).unwrap().size, 4);
}

#[test]
fn bad_material_is_named() {
    let btf = kernel_btf();
    let m = Material {
        btf: Some(&btf[..btf.len() - 10]),
        kallsyms: Some(KALLSYMS),
        ..Material::default()
    };
    let e = m.isf(&Selection::All).unwrap_err();
    assert!(
        matches!(e, MaterialError::Btf(BtfError::Truncated { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("truncated BTF"), "{e}");
    let m = Material {
        btf: Some(&btf),
        kallsyms: None,
        ..Material::default()
    };
    assert_eq!(
        m.isf(&Selection::All).unwrap_err(),
        MaterialError::NoKallsyms
    );
    let m = Material {
        btf: None,
        kallsyms: Some(KALLSYMS),
        ..Material::default()
    };
    assert_eq!(m.isf(&Selection::All).unwrap_err(), MaterialError::NoBtf);
    let tiny = btf::tests_sample();
    let m = Material {
        btf: Some(&tiny),
        kallsyms: Some(KALLSYMS),
        ..Material::default()
    };
    assert_eq!(
        m.isf(&Selection::All).unwrap_err(),
        MaterialError::MissingType("task_struct")
    );
}
