//! Whether this machine can run the `cuda` backend, asked before Burn is.
//!
//! CubeCL loads the driver (`libcuda`) lazily in its device thread and panics there when it is
//! missing or finds no device; the main thread then panics too, on the closed channel. Loading
//! the driver here first, as cudarc does, and asking it for its devices turns that into an
//! error that says what is missing. The same goes for `libdevice.10.bc`, the CUDA toolkit's
//! math library (exp, erf, tanh: every BERT pass), which CubeCL's LLVM compiler links into
//! kernels and looks for under `CUDA_PATH` or a few usual toolkit roots.

use std::ffi::{CStr, c_void};
use std::path::{Path, PathBuf};

/// The driver's library names, as cudarc tries them.
const LIBRARIES: [&CStr; 2] = [c"libcuda.so.1", c"libcuda.so"];

/// `CUDA_ERROR_NO_DEVICE` in cuda.h.
const NO_DEVICE: i32 = 100;

/// How many CUDA devices the driver sees, or why there is none to use.
pub fn device_count() -> Result<usize, String> {
    let library = LIBRARIES
        .iter()
        // SAFETY: a NUL-terminated name; the handle is never closed (cudarc loads the same
        // library again, and unloading a driver is not something to do mid-process).
        .map(|name| unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) })
        .find(|handle| !handle.is_null())
        .ok_or("no CUDA driver: libcuda.so.1 could not be loaded (install the NVIDIA driver)")?;
    let init = symbol(library, c"cuInit")?;
    let count = symbol(library, c"cuDeviceGetCount")?;
    // SAFETY: the driver API's signatures: `CUresult cuInit(unsigned int flags)` and
    // `CUresult cuDeviceGetCount(int *count)`, with CUresult an int.
    let (init, count) = unsafe {
        (
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> i32>(init),
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut i32) -> i32>(count),
        )
    };
    // SAFETY: flags must be 0; the count points at a live i32.
    let code = unsafe { init(0) };
    if code == NO_DEVICE {
        return Err("the CUDA driver is installed but finds no GPU".into());
    }
    if code != 0 {
        return Err(format!("the CUDA driver failed to start (CUresult {code})"));
    }
    let mut n = 0i32;
    // SAFETY: as above.
    let code = unsafe { count(&mut n) };
    if code != 0 {
        return Err(format!(
            "the CUDA driver cannot count its devices (CUresult {code})"
        ));
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

fn symbol(library: *mut c_void, name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: a live handle from dlopen and a NUL-terminated name.
    let symbol = unsafe { libc::dlsym(library, name.as_ptr()) };
    if symbol.is_null() {
        return Err(format!(
            "the CUDA driver has no {} (too old?)",
            name.to_string_lossy()
        ));
    }
    Ok(symbol)
}

/// Where CubeCL looks for a toolkit when `CUDA_PATH` is unset (cubecl-llvm's `CUDA_ROOTS`).
const TOOLKIT_ROOTS: [&str; 4] = ["/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda", "/usr"];

const LIBDEVICE: &str = "nvvm/libdevice/libdevice.10.bc";

/// Finds `libdevice.10.bc` where CubeCL will look for it. Without `CUDA_PATH` or a system
/// toolkit, the copy `scripts/cuda-llvm.sh` installs (from PyPI's nvidia-cuda-nvcc wheel) is
/// used, by pointing `CUDA_PATH` at it; called while the process has one thread.
pub fn find_libdevice() -> Result<(), String> {
    if let Some(root) = std::env::var_os("CUDA_PATH") {
        let path = Path::new(&root).join(LIBDEVICE);
        return match path.is_file() {
            true => Ok(()),
            false => Err(format!(
                "CUDA_PATH is set, but {} does not exist",
                path.display()
            )),
        };
    }
    if TOOLKIT_ROOTS
        .iter()
        .any(|root| Path::new(root).join(LIBDEVICE).is_file())
    {
        return Ok(());
    }
    match installed_toolkit().filter(|root| root.join(LIBDEVICE).is_file()) {
        Some(root) => {
            // SAFETY: device selection runs first thing in `main`, before any other thread
            // exists that could read the environment.
            unsafe { std::env::set_var("CUDA_PATH", &root) };
            Ok(())
        }
        None => Err(format!(
            "no CUDA math library ({LIBDEVICE}) under CUDA_PATH or {}: install the CUDA \
             toolkit, or run scripts/cuda-llvm.sh, which installs it from PyPI",
            TOOLKIT_ROOTS.join(", ")
        )),
    }
}

/// `scripts/cuda-llvm.sh`'s toolkit directory: `$XDG_DATA_HOME/bert-peft/cuda`, else
/// `~/.local/share/bert-peft/cuda`.
fn installed_toolkit() -> Option<PathBuf> {
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/share"),
    };
    Some(data.join("bert-peft/cuda"))
}

/// Whether NCCL, which distributed data parallel all-reduces gradients with, can be loaded
/// under a name cudarc tries. cudarc loads it lazily in a worker thread and panics there when
/// it is missing; its names include `libnccl.so` but not the library's soname `libnccl.so.2`,
/// which is all a runtime-only install (PyPI's nvidia-nccl-cu12, Debian's libnccl2) provides.
pub fn find_nccl() -> Result<(), String> {
    // SAFETY (both calls): NUL-terminated names; a handle found is kept open, as cudarc would
    // load the same library again.
    let load =
        |name: &CStr| unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if !load(c"libnccl.so").is_null() {
        return Ok(());
    }
    if !load(c"libnccl.so.2").is_null() {
        return Err(
            "NCCL is installed as libnccl.so.2 only, and Burn's CUDA runtime loads it as \
             libnccl.so: link it under that name on the library path (Debian's libnccl-dev \
             does) or train with strategy \"multi-device\""
                .into(),
        );
    }
    Err(
        "no NCCL (libnccl.so) on the library path: install NCCL (e.g. Debian's libnccl-dev, \
         or PyPI's nvidia-nccl-cu12 with libnccl.so.2 linked as libnccl.so on LD_LIBRARY_PATH) \
         or train with strategy \"multi-device\""
            .into(),
    )
}
