//! The compute device of a process: `--device` is parsed once into a [`DeviceChoice`] and
//! opened once into a [`Backend`], which the binary hands the executor as a
//! [`Resources`](crate::exec::Resources) handle; every stage run then computes on that one
//! device ([`on_device!`]). Opening a CUDA device creates a context and its memory pool, which
//! is worth doing once per process, not once per stage. Nothing here is part of any key.

/// Where stages compute, as `--device` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected `cpu`, `cuda` or `cuda:N`")]
    Unknown(String),
    #[error("device `{0}` needs a cfpipe built with `--features cuda`; this build runs on the CPU only (use `--device cpu`)")]
    NoCudaSupport(String),
    #[error("device `{device}` is not usable: {cause} (use `--device cpu`, or check the driver with `nvidia-smi`)")]
    CudaUnavailable { device: String, cause: String },
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<DeviceChoice, DeviceError> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(|n| n.parse::<usize>()) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(DeviceError::Unknown(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// An opened device, shared by every stage run of the process.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Stages build their own `Cpu` (it is free to make), seeded alike, so a stage's result
    /// never depends on what ran before it in the process.
    Cpu,
    /// dfdx's `Cuda` holds a CUDA stream that is neither `Send` nor `Sync`, so it cannot be
    /// shared between stage threads: the device is checked once at start, and each stage run
    /// opens its own handle on it.
    #[cfg(feature = "cuda")]
    Cuda { ordinal: usize },
}

impl Backend {
    /// Parse `--device` and open it, before any work starts: a CPU-only build refuses CUDA,
    /// and a CUDA build reports a missing driver or GPU as an error instead of a panic inside
    /// a stage.
    pub fn open(raw: &str) -> Result<Backend, DeviceError> {
        match DeviceChoice::parse(raw)? {
            DeviceChoice::Cpu => Ok(Backend::Cpu),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(n) => {
                open_cuda(n)
                    .map(|_| Backend::Cuda { ordinal: n })
                    .map_err(|cause| DeviceError::CudaUnavailable {
                        device: raw.to_string(),
                        cause,
                    })
            }
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda(_) => Err(DeviceError::NoCudaSupport(raw.to_string())),
        }
    }

    /// The device's name as manifests record it.
    pub fn label(&self) -> String {
        match self {
            Backend::Cpu => DeviceChoice::Cpu.to_string(),
            #[cfg(feature = "cuda")]
            Backend::Cuda { ordinal, .. } => DeviceChoice::Cuda(*ordinal).to_string(),
        }
    }
}

/// Open CUDA device `n`. cudarc panics when the driver library is missing, so the attempt is
/// fenced off and turned into an error.
#[cfg(feature = "cuda")]
pub fn open_cuda(n: usize) -> Result<dfdx::tensor::Cuda, String> {
    // Formatting a driver error asks the driver for its text, so it is fenced off too. The
    // default hook would print the panic as if cfpipe had crashed; it is silenced meanwhile.
    // One swap of the hook at a time, or a thread could restore another's silent hook for good.
    static SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _swap = SWAP.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| {
        dfdx::tensor::Cuda::try_build(n, 0).map_err(|e| format!("{e:?}"))
    });
    std::panic::set_hook(hook);
    opened.map_err(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no detail");
        format!("the CUDA driver failed to initialise ({why})")
    })?
}

/// Run a device-generic stage body on the process's device: the [`Backend`] among the
/// context's resources, or the CPU when none was given (library callers and tests).
macro_rules! on_device {
    ($ctx:expr, $body:ident) => {{
        match $ctx
            .resource::<$crate::stages::Backend>()
            .unwrap_or(&$crate::stages::Backend::Cpu)
        {
            // On one of the pool's workers: see `on_pool`.
            $crate::stages::Backend::Cpu => {
                $crate::nn::host::on_pool(|| $body(&dfdx::tensor::Cpu::seed_from_u64(0), $ctx))
            }
            #[cfg(feature = "cuda")]
            $crate::stages::Backend::Cuda { ordinal } => {
                let dev = $crate::stages::device::open_cuda(*ordinal)
                    .map_err($crate::exec::StageError::failed)?;
                $body(&dev, $ctx)
            }
        }
    }};
}
pub(crate) use on_device;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parsing_and_availability() {
        assert_eq!(DeviceChoice::parse("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(DeviceChoice::parse("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        assert!(matches!(
            DeviceChoice::parse("gpu"),
            Err(DeviceError::Unknown(_))
        ));
        assert!(matches!(
            DeviceChoice::parse("cuda:x"),
            Err(DeviceError::Unknown(_))
        ));
        assert_eq!(DeviceChoice::Cuda(3).to_string(), "cuda:3");
        assert!(matches!(Backend::open("cpu"), Ok(Backend::Cpu)));
        assert_eq!(Backend::Cpu.label(), "cpu");
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(
            Backend::open("cuda"),
            Err(DeviceError::NoCudaSupport(_))
        ));
    }
}
