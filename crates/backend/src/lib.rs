//! Run-time backend selection.
//!
//! longctx is one binary with its backends compiled in (the CPU ones and WGPU always, CUDA with
//! the `cuda` feature: `cargo build --release --features cuda`); `--backend` picks one at run time.
//! Code that needs a backend is written once as a [`BackendJob`] (generic over burn's
//! `Backend`) and [`run_on`] instantiates it for the chosen backend after checking that the
//! device is usable, so a missing GPU is an [`Error::Backend`] rather than a panic.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;

use burn::backend::{wgpu::WgpuDevice, Flex, NdArray};
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use longctx_core::{Error, Result};

/// burn's fused CUDA backend (built with the `cuda` feature), with `LONGCTX_CUDA_FUSION=1`.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<f32, i32>;
/// burn's CUDA backend without burn-fusion, what `--backend cuda` runs unless
/// `LONGCTX_CUDA_FUSION=1`: every operation is launched as it is called, with no recording or
/// fusion search on the host, and the model's RMSNorm and decode attention run as custom
/// kernels (`longctx-gpu-kernels`; `LONGCTX_GPU_KERNELS=0` turns them off).
#[cfg(feature = "cuda")]
pub type CudaUnfusedBackend = longctx_gpu_kernels::CudaUnfused;
/// The WGPU backend type.
pub type WgpuBackend = burn::backend::Wgpu<f32, i32>;
/// The flex CPU backend type.
pub type FlexBackend = Flex;
/// The ndarray CPU backend type.
pub type NdArrayBackend = NdArray<f32>;

/// A backend that can be asked for on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The default CPU backend: [`DEFAULT_CPU`].
    Cpu,
    /// burn's flex CPU backend (gemm-based matmul, flash attention).
    Flex,
    /// burn's ndarray CPU backend.
    Ndarray,
    /// WGPU: Vulkan, Metal or DirectX; on a CPU-only Linux machine, Mesa's lavapipe.
    Wgpu,
    /// NVIDIA CUDA.
    Cuda,
}

/// What `cpu` means. Chosen by measurement: see `results/backends/cpu-backends.json`
/// (`longctx bench-cpu-backends`), where flex ran the tiny and SmolLM2-sized workloads faster
/// than ndarray.
pub const DEFAULT_CPU: BackendKind = BackendKind::Flex;

impl BackendKind {
    /// Every name accepted by [`FromStr`].
    pub const NAMES: [&'static str; 5] = ["cpu", "flex", "ndarray", "wgpu", "cuda"];

    /// `Cpu` resolved to the concrete default; others unchanged.
    pub fn resolve(self) -> BackendKind {
        match self {
            BackendKind::Cpu => DEFAULT_CPU,
            k => k,
        }
    }

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "flex" => Ok(BackendKind::Flex),
            "ndarray" => Ok(BackendKind::Ndarray),
            "wgpu" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            _ => Err(Error::UnknownName {
                kind: "backend",
                name: s.to_string(),
                valid: Self::NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}

/// Which backend and device a job ran on, for result records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendInfo {
    /// The concrete backend (never `cpu`).
    pub kind: BackendKind,
    /// burn's name for the backend, e.g. `fusion<cubecl<wgpu<vulkan>>>`.
    pub burn_name: String,
    /// The device: CPU model, GPU adapter name and driver.
    pub device: String,
}

/// Work generic over the backend; see [`run_on`].
pub trait BackendJob {
    type Output;
    /// Runs the job on backend `B`, device `device`.
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output;
}

/// Runs `f` with panics caught and their default message silenced; a panic becomes `None`
/// and its message is returned in the error string.
fn catch<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    panic::set_hook(hook);
    out.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into())
    })
}

/// Runs a tiny computation on the device to prove it works.
fn smoke_test<B: Backend>(device: &B::Device) -> std::result::Result<(), String> {
    catch(|| {
        let x = Tensor::<B, 1>::ones([4], device);
        let sum: f32 = x
            .sum()
            .into_scalar()
            .to_string()
            .parse()
            .unwrap_or(f32::NAN);
        sum
    })
    .and_then(|s| {
        if s == 4.0 {
            Ok(())
        } else {
            Err(format!("a test sum gave {s} instead of 4"))
        }
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
        + &format!(
            " ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
}

#[cfg(any(feature = "cuda", test))]
fn nvidia_gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version",
            "--format=csv,noheader",
            "-i",
            "0",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        format!("{s} (name, driver)")
    })
}

/// Checks that `kind` is usable here and runs `job` on it.
pub fn run_on<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output> {
    let kind = kind.resolve();
    let unusable = |message: String| Error::Backend {
        backend: kind.name().to_string(),
        message,
    };
    match kind {
        BackendKind::Flex | BackendKind::Cpu => {
            let device = Default::default();
            let info = BackendInfo {
                kind,
                burn_name: FlexBackend::name(&device),
                device: cpu_model(),
            };
            Ok(job.run::<FlexBackend>(device, info))
        }
        BackendKind::Ndarray => {
            let device = Default::default();
            let info = BackendInfo {
                kind,
                burn_name: NdArrayBackend::name(&device),
                device: cpu_model(),
            };
            Ok(job.run::<NdArrayBackend>(device, info))
        }
        BackendKind::Wgpu => {
            let device = WgpuDevice::default();
            let setup = catch(|| {
                burn::backend::wgpu::init_setup::<burn::backend::wgpu::graphics::AutoGraphicsApi>(
                    &device,
                    Default::default(),
                )
            })
            .map_err(|m| {
                unusable(format!(
                    "no WGPU adapter could be initialised ({m}); on Linux install a Vulkan driver \
                     (e.g. the Debian package mesa-vulkan-drivers for the CPU) and the loader libvulkan1"
                ))
            })?;
            let adapter = setup.adapter.get_info();
            smoke_test::<WgpuBackend>(&device).map_err(unusable)?;
            let info = BackendInfo {
                kind,
                burn_name: WgpuBackend::name(&device),
                device: format!(
                    "{} ({:?}, driver {} {})",
                    adapter.name, adapter.backend, adapter.driver, adapter.driver_info
                ),
            };
            Ok(job.run::<WgpuBackend>(device, info))
        }
        BackendKind::Cuda => run_on_cuda(job, unusable),
    }
}

/// Whether the CUDA backend runs through burn-fusion: only when the environment variable
/// `LONGCTX_CUDA_FUSION` is `1`, `on` or `true`. Unfused, with the custom RMSNorm and decode
/// attention kernels, decoded SmolLM2-135M at 84-85 tokens/s on an H100 at 512 to 8,000 tokens
/// (`results/perf/smollm2-135m__cuda__nvidia-h100__split-kernels-2026-12-06.json`); fused, with
/// burn's ops, at 43-48 on an H200 (`..._nvidia-h200__fused-2026-12-05.json`), prefill within
/// 15% of unfused at every length there.
#[cfg(any(feature = "cuda", test))]
fn cuda_fusion_wanted(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "on" | "true")
    )
}

/// The CUDA arm of [`run_on`]: burn's fused CUDA backend, or the unfused one (see
/// [`cuda_fusion_wanted`]); the record's `burn_name` says which ran.
#[cfg(feature = "cuda")]
fn run_on_cuda<J: BackendJob>(job: J, unusable: impl Fn(String) -> Error) -> Result<J::Output> {
    fn go<B: Backend, J: BackendJob>(
        device: B::Device,
        job: J,
        unusable: impl Fn(String) -> Error,
    ) -> Result<J::Output> {
        smoke_test::<B>(&device).map_err(|m| {
            unusable(format!("no usable NVIDIA GPU ({m}); the CUDA backend needs an NVIDIA driver (libcuda) and a GPU"))
        })?;
        let info = BackendInfo {
            kind: BackendKind::Cuda,
            burn_name: B::name(&device),
            device: nvidia_gpu_name().unwrap_or_else(|| "NVIDIA GPU 0".into()),
        };
        Ok(job.run::<B>(device, info))
    }
    let device = burn::backend::cuda::CudaDevice::default();
    let fusion = std::env::var("LONGCTX_CUDA_FUSION").ok();
    if cuda_fusion_wanted(fusion.as_deref()) {
        go::<CudaBackend, J>(device, job, unusable)
    } else {
        go::<CudaUnfusedBackend, J>(device, job, unusable)
    }
}

/// Without the `cuda` feature the CUDA backend is not in the binary: say how to get it.
#[cfg(not(feature = "cuda"))]
fn run_on_cuda<J: BackendJob>(_job: J, unusable: impl Fn(String) -> Error) -> Result<J::Output> {
    Err(unusable(
        "this longctx was built without the CUDA backend; rebuild it with `cargo build --release --features cuda`"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl BackendJob for Sum {
        type Output = (f32, String);
        fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
            let x = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.5], &device);
            (
                x.sum().into_scalar().to_string().parse().unwrap(),
                info.kind.name().to_string(),
            )
        }
    }

    #[test]
    fn names_parse_and_unknown_lists_valid() {
        assert_eq!("CUDA".parse::<BackendKind>().unwrap(), BackendKind::Cuda);
        let err = "tpu".parse::<BackendKind>().unwrap_err().to_string();
        assert!(err.contains("cpu, flex, ndarray, wgpu, cuda"), "{err}");
    }

    #[test]
    fn cpu_backends_run_jobs() {
        assert_eq!(
            run_on(BackendKind::Cpu, Sum).unwrap(),
            (6.5, DEFAULT_CPU.name().to_string())
        );
        assert_eq!(run_on(BackendKind::Ndarray, Sum).unwrap().0, 6.5);
    }

    #[test]
    fn cuda_fusion_is_off_unless_asked_for() {
        assert!(!cuda_fusion_wanted(None));
        assert!(cuda_fusion_wanted(Some("1")));
        assert!(cuda_fusion_wanted(Some(" On ")));
        for off in ["0", "off", "FALSE", " false "] {
            assert!(!cuda_fusion_wanted(Some(off)), "{off}");
        }
    }

    /// CI has no NVIDIA GPU: asking for CUDA must be a clear error, not a panic.
    #[test]
    fn missing_cuda_is_an_error_not_a_panic() {
        if nvidia_gpu_name().is_some() {
            return; // a GPU machine: the job runs instead
        }
        let err = run_on(BackendKind::Cuda, Sum).unwrap_err().to_string();
        assert!(err.contains("backend 'cuda' is not usable here"), "{err}");
    }
}
