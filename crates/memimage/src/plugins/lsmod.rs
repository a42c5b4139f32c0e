//! lsmod: loaded modules from the `modules` list. Size = core + init, as
//! Volatility's "Code Size": `mem[]` per `mod_mem_type` on 6.4+,
//! `core_layout`/`init_layout` on 4.5-6.3, `core_size`/`init_size` before.

use super::tasks::walk_list;
use super::{Row, Value};
use crate::kernel::{Kernel, KernelError};

fn size(k: &Kernel<'_, '_>, m: u64) -> Result<u64, KernelError> {
    let p = k.profile;
    let read = |st: &str, f: &str, base: u64| -> Result<u64, KernelError> {
        Ok(u64::try_from(k.read_int(base, st, f)?).unwrap_or(0))
    };
    if p.has_field("module", "mem") {
        let mem = m.wrapping_add(p.offset("module", "mem")?);
        let elem = p.struct_def("module_memory")?.size;
        // MOD_MEM_NUM_TYPES itself when known: counting the constants
        // would also count MOD_INVALID (-1, 6.4+) and read past mem[].
        let count = p
            .enum_value("mod_mem_type", "MOD_MEM_NUM_TYPES")
            .and_then(|n| u64::try_from(n).ok())
            .or_else(|| {
                p.enums.get("mod_mem_type").map(|e| {
                    e.constants
                        .iter()
                        .filter(|(n, v)| n.as_str() != "MOD_MEM_NUM_TYPES" && **v >= 0)
                        .count() as u64
                })
            })
            .unwrap_or(7);
        let mut total = 0u64;
        for i in 0..count {
            total =
                total.saturating_add(read("module_memory", "size", mem.wrapping_add(i * elem))?);
        }
        Ok(total)
    } else if p.has_field("module", "core_layout") {
        let core = m.wrapping_add(p.offset("module", "core_layout")?);
        let init = m.wrapping_add(p.offset("module", "init_layout")?);
        Ok(read("module_layout", "size", core)?.saturating_add(read(
            "module_layout",
            "size",
            init,
        )?))
    } else {
        Ok(read("module", "core_size", m)?.saturating_add(read("module", "init_size", m)?))
    }
}

pub(crate) fn run(k: &Kernel<'_, '_>) -> Result<Vec<Row>, KernelError> {
    let p = k.profile;
    let list_off = p.offset("module", "list")?;
    let name_f = p.field("module", "name")?;
    let name_len = usize::try_from(p.type_size(&name_f.ty).unwrap_or(56))
        .unwrap_or(56)
        .min(256);
    let head = k.symbol("modules")?;
    let mut rows = Vec::new();
    for m in walk_list(k, head, list_off, "modules")? {
        let mut name = vec![0u8; name_len];
        k.read(m.wrapping_add(name_f.offset), &mut name, || {
            format!("module {m:#x} name")
        })?;
        let end = memchr::memchr(0, &name).unwrap_or(name.len());
        rows.push(Row {
            fields: vec![
                (
                    "name",
                    Value::Str(
                        String::from_utf8_lossy(name.get(..end).unwrap_or_default()).into_owned(),
                    ),
                ),
                ("size", Value::UInt(size(k, m)?)),
                ("offset", Value::UInt(m)),
            ],
        });
    }
    Ok(rows)
}
