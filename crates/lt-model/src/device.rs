//! Device selection that works around libtorch's CUDA library being dropped by the linker.
//!
//! `tch` links `libtorch_cuda.so` only through `libtorch.so`'s dependencies; with the linker's
//! `--as-needed` (the default on most distributions) the CUDA library is not a `NEEDED` entry of
//! the final binary, so it is never loaded and `tch::Cuda::is_available()` reports `false` even
//! on a GPU machine. [`load_cuda_library`] `dlopen`s it explicitly (a no-op where it is absent).
use tch::Device;

/// `dlopen("libtorch_cuda.so")` once (and `libtorch_hip.so` as a fallback); returns whether one
/// of them was loaded. Safe to call many times.
pub fn load_cuda_library() -> bool {
    use std::sync::OnceLock;
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        ["libtorch_cuda.so", "libtorch_hip.so"].iter().any(|name| {
            let c = std::ffi::CString::new(*name).expect("static name has no NUL");
            // SAFETY: dlopen with a valid NUL-terminated name; the handle is intentionally leaked
            // so the library stays loaded for the life of the process.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            !h.is_null()
        })
    })
}

/// Whether a CUDA device is usable (after [`load_cuda_library`]).
pub fn cuda_available() -> bool {
    load_cuda_library();
    tch::Cuda::is_available()
}

/// `Device::Cuda(0)` when CUDA is usable, else `Device::Cpu`.
pub fn cuda_if_available() -> Device {
    if cuda_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// Parse `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn parse_device(s: &str) -> Result<Device, crate::ModelError> {
    let s = s.to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(cuda_if_available()),
        "cuda" | "gpu" => {
            if cuda_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(crate::ModelError::Input(
                    "device `cuda` requested but CUDA is not available".into(),
                ))
            }
        }
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if cuda_available() && (n as i64) < tch::Cuda::device_count() => {
                Ok(Device::Cuda(n))
            }
            Some(n) => Err(crate::ModelError::Input(format!(
                "device cuda:{n} is not available"
            ))),
            None => Err(crate::ModelError::Input(format!(
                "unknown device `{s}` (cpu, cuda, cuda:N, auto)"
            ))),
        },
    }
}
