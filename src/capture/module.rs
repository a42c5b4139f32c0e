//! Whether a LiME module file can serve the target's kernel, decided
//! before anything is pushed.

use anyhow::bail;

use crate::pipeline::source;
use crate::repository::ModuleFile;
use crate::target;

/// Whether `module` can serve this kernel: the input of `source::choose`.
pub(super) fn module_availability(
    module: &ModuleFile,
    kernel: &target::KernelInfo,
) -> source::ModuleAvailability {
    if module.bytes.is_empty() {
        return source::ModuleAvailability::Missing("no LiME module was given (--module)".into());
    }
    match check_module_matches(module, kernel) {
        Ok(()) => source::ModuleAvailability::Available {
            signed: source::module_is_signed(&module.bytes),
        },
        Err(e) => source::ModuleAvailability::Missing(format!("{e:#}")),
    }
}

/// Refuses a module built for another architecture or kernel before it is pushed.
fn check_module_matches(module: &ModuleFile, kernel: &target::KernelInfo) -> anyhow::Result<()> {
    let bytes = &module.bytes;
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        bail!(
            "{} is not a kernel module (no ELF header)",
            module.path.display()
        );
    }
    let e_machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    let module_arch = match e_machine {
        62 => "x86_64",
        183 => "aarch64",
        other => bail!(
            "{} is for ELF machine {other}, which mshot does not support",
            module.path.display()
        ),
    };
    if module_arch != kernel.machine {
        bail!(
            "{} is built for {module_arch} but the target is {}",
            module.path.display(),
            kernel.machine
        );
    }
    if let Some(vermagic) = crate::repository::manifest::find_vermagic(bytes)
        && vermagic != kernel.release
    {
        bail!(
            "{} is built for kernel {vermagic} but the target runs {}; build LiME for {} (see kernel-modules/README.md)",
            module.path.display(),
            kernel.release,
            kernel.release
        );
    }
    Ok(())
}
