//! Timing on the GPU: CUDA events around work on the stream, an L2 flush between timed
//! runs, and the device-to-device copy bandwidth that sparse reads are measured against.

use cudarc::driver::{CudaEvent, CudaSlice, sys::CUevent_flags};

use super::{Gpu, driver};
use crate::KernelError;

/// A CUDA event recorded on the stream; [`GpuTimer::stop`] gives the GPU time since.
pub struct GpuTimer {
    start: CudaEvent,
}

/// A device buffer larger than the L2 cache; writing it evicts whatever a timed run would
/// otherwise find cached, as a step of a many-layer model would.
pub struct L2Flush {
    buffer: CudaSlice<u8>,
}

impl Gpu {
    /// Starts a timer at this point of the stream.
    pub fn start_timer(&self) -> Result<GpuTimer, KernelError> {
        let start = self.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver)?;
        Ok(GpuTimer { start })
    }

    /// A flush buffer of `bytes` (at least 4x a 60 MiB L2 is safe).
    pub fn l2_flush(&self, bytes: usize) -> Result<L2Flush, KernelError> {
        Ok(L2Flush { buffer: self.stream.alloc_zeros(bytes.max(1)).map_err(driver)? })
    }

    /// Writes the whole flush buffer.
    pub fn flush_l2(&self, flush: &mut L2Flush) -> Result<(), KernelError> {
        self.stream.memset_zeros(&mut flush.buffer).map_err(driver)
    }

    /// Seconds of `reps` device-to-device copies of `bytes` each, timed one by one: the
    /// memory reference of the GPU benchmark (bandwidth = 2 * bytes / time, read plus
    /// written).
    pub fn copy_times(&self, bytes: usize, reps: usize) -> Result<Vec<f64>, KernelError> {
        let s = &self.stream;
        let from = s.alloc_zeros::<u8>(bytes.max(1)).map_err(driver)?;
        let mut to = s.alloc_zeros::<u8>(bytes.max(1)).map_err(driver)?;
        (0..reps)
            .map(|_| {
                let timer = self.start_timer()?;
                s.memcpy_dtod(&from, &mut to).map_err(driver)?;
                timer.stop(self)
            })
            .collect()
    }
}

impl GpuTimer {
    /// Seconds of GPU time from the start to this point of the stream (waits for it).
    pub fn stop(self, gpu: &Gpu) -> Result<f64, KernelError> {
        let end = gpu.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver)?;
        Ok(f64::from(self.start.elapsed_ms(&end).map_err(driver)?) / 1e3)
    }
}
