//! Peak memory of this process: resident set on CPUs, device memory on NVIDIA GPUs.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use longctx_backend::BackendKind;
use serde::{Deserialize, Serialize};

/// A peak-memory probe for one backend.
pub enum PeakMemory {
    /// Peak resident set (`VmHWM`), reset through `/proc/self/clear_refs`.
    HostRss,
    /// This process's GPU memory as `nvidia-smi` reports it (driver context included), sampled
    /// every 20 ms by a thread.
    NvidiaSmi(GpuSampler),
    /// No probe available (a GPU that is not NVIDIA).
    Unavailable,
}

impl PeakMemory {
    /// The probe that fits `kind`.
    pub fn for_backend(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Cpu | BackendKind::Flex | BackendKind::Ndarray => PeakMemory::HostRss,
            BackendKind::Cuda | BackendKind::Wgpu => match GpuSampler::start() {
                Some(s) => PeakMemory::NvidiaSmi(s),
                None => PeakMemory::Unavailable,
            },
        }
    }

    /// What [`PeakMemory::peak`] measures.
    pub fn kind(&self) -> &'static str {
        match self {
            PeakMemory::HostRss => "process peak resident set (VmHWM)",
            PeakMemory::NvidiaSmi(_) => "process GPU memory, nvidia-smi, sampled every 20 ms",
            PeakMemory::Unavailable => "not measured",
        }
    }

    /// Starts a new measurement window.
    pub fn reset(&self) {
        match self {
            // Writing 5 resets the peak resident set to the current one (Linux >= 4.0).
            PeakMemory::HostRss => {
                let _ = std::fs::write("/proc/self/clear_refs", "5");
            }
            PeakMemory::NvidiaSmi(s) => s.peak.store(0, Ordering::Relaxed),
            PeakMemory::Unavailable => {}
        }
    }

    /// The peak since the last reset, in bytes.
    pub fn peak(&self) -> Option<u64> {
        match self {
            PeakMemory::HostRss => proc_status_kib("VmHWM:").map(|k| k * 1024),
            PeakMemory::NvidiaSmi(s) => {
                std::thread::sleep(Duration::from_millis(60));
                Some(s.peak.load(Ordering::Relaxed)).filter(|&b| b > 0)
            }
            PeakMemory::Unavailable => None,
        }
    }
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples this process's GPU memory with `nvidia-smi` until dropped.
pub struct GpuSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GpuSampler {
    fn start() -> Option<Self> {
        gpu_memory_of(std::process::id())?;
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(b) = gpu_memory_of(std::process::id()) {
                    p.fetch_max(b, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Some(Self {
            peak,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for GpuSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GPU memory used by process `pid` (bytes), `Some(0)` if it holds none yet, `None` when
/// `nvidia-smi` is missing.
fn gpu_memory_of(pid: u32) -> Option<u64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mib: u64 = text
        .lines()
        .filter_map(|l| {
            let (p, m) = l.split_once(',')?;
            (p.trim().parse::<u32>().ok()? == pid).then(|| m.trim().parse::<u64>().ok())?
        })
        .sum();
    Some(mib * 1024 * 1024)
}

/// The machine a benchmark ran on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineInfo {
    pub cpu: String,
    pub logical_cpus: usize,
    pub memory_bytes: u64,
    pub gpus: Vec<String>,
    pub host: String,
}

/// Reads CPU model, core count, memory and NVIDIA GPUs.
pub fn machine_info() -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
            line["MemTotal:".len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024;
    let gpus = Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    MachineInfo {
        cpu,
        logical_cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_bytes,
        gpus,
        host: std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_peak_grows_with_an_allocation_and_resets() {
        let probe = PeakMemory::HostRss;
        probe.reset();
        let before = probe.peak().expect("VmHWM readable on Linux");
        // Touch 64 MiB so it becomes resident.
        let big = vec![1u8; 64 << 20];
        assert!(big.iter().step_by(4096).all(|&b| b == 1));
        let after = probe.peak().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        drop(big);
        probe.reset();
        assert!(probe.peak().unwrap() < after);
    }
}
