//! banner: every Linux banner in physical memory (needs no profile), with
//! its physical address. This one scans the whole image.

use super::{Row, Value};
use crate::format::PhysicalMemory;
use crate::kernel::{KernelError, find_banners};

pub(crate) fn run(phys: &PhysicalMemory<'_>) -> Result<Vec<Row>, KernelError> {
    Ok(find_banners(phys, 64)?
        .into_iter()
        .map(|(pa, text)| Row {
            fields: vec![
                (
                    "banner",
                    Value::Str(String::from_utf8_lossy(&text).into_owned()),
                ),
                ("offset", Value::UInt(pa)),
            ],
        })
        .collect())
}
