//! banner: every Linux banner in physical memory (needs no profile), with
//! its physical address. This one scans the whole image.

use super::{Row, Value};
use crate::format::PhysicalMemory;
use crate::kernel::{KernelError, find_banners};

/// No banner at all is an error, as for every other plugin: the file is
/// most likely not a Linux memory image.
pub(crate) fn run(phys: &PhysicalMemory<'_>) -> Result<Vec<Row>, KernelError> {
    let banners = find_banners(phys, 64)?;
    if banners.is_empty() {
        return Err(KernelError::NoBanner);
    }
    Ok(banners
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
