//! Decoding blocks in parallel into sinks of their own, a step at a time,
//! with the threads that run out of blocks feeding the others' steps.

use super::container::{Block, plan};
use super::raw_decoder;
use crc_fast::CrcAlgorithm;
use liblzma::stream::{Action, Status};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Output decoded per step when streaming into a [`Sink`].
const STEP: usize = 256 << 10;

/// Takes decoded text a step at a time (see [`decode_into`]).
pub(in crate::profile) trait Sink: Send {
    /// Takes in the next decoded text; false stops all decoding.
    fn feed(&mut self, text: &[u8]) -> bool;
}

/// One block's decoded steps on their way to its sink. Any thread may feed
/// them (in order: it holds the sink while it takes them from the queue),
/// so the other threads take that work off the thread decoding the first,
/// longest block, which is what a first load waits for (the 6.1 ISF's first
/// `analyze`: 82 ms became 78 ms, both cores busy to the end).
struct Lane<S> {
    sink: Mutex<S>,
    queue: Mutex<VecDeque<Vec<u8>>>,
    decoded: AtomicBool,
}

/// Steps the first block's thread may leave queued for the other threads
/// before it feeds them itself (each is [`STEP`] long).
const BACKLOG: usize = 8;

/// Decodes each block into a sink of its own, a step at a time, blocks in
/// parallel (up to one thread per core), and checks each block's CRC64;
/// the decoded text is never held whole. `None` when the container is not
/// one [`plan`] handles; an error when decoding failed or a sink said stop.
pub(in crate::profile) fn decode_into<S: Sink>(
    f: &[u8],
    make: &(dyn Fn(usize) -> S + Sync),
) -> Option<Result<Vec<S>, String>> {
    let blocks = plan(f)?;
    let lanes: Vec<Lane<S>> = (0..blocks.len())
        .map(|i| Lane {
            sink: Mutex::new(make(i)),
            queue: Mutex::new(VecDeque::new()),
            decoded: AtomicBool::new(false),
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks.len());
    let shared = Shared {
        threads,
        stop: AtomicBool::new(false),
        helping: AtomicUsize::new(0),
        free: Mutex::new(Vec::new()),
        wake: (Mutex::new(()), Condvar::new()),
    };
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let (Some(block), Some(lane)) = (blocks.get(index), lanes.get(index)) else {
                break;
            };
            let result = stream_block(f, (index, block), &lanes, &shared);
            lane.decoded.store(true, Ordering::Release);
            shared.notify();
            if let Err(e) = result {
                shared.stop.store(true, Ordering::Relaxed);
                if let Ok(mut errors) = errors.lock() {
                    errors.push(e);
                }
            }
        }
        help(&lanes, &shared);
    };
    std::thread::scope(|s| {
        // A thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        work();
        for h in helpers {
            let _ = h.join();
        }
    });
    if let Some(e) = errors.into_inner().ok().and_then(|e| e.into_iter().next()) {
        return Some(Err(e));
    }
    if shared.stop.load(Ordering::Relaxed) {
        return Some(Err("the text is not laid out as expected".into()));
    }
    Some(
        lanes
            .into_iter()
            .map(|l| l.sink.into_inner().map_err(|e| e.to_string()))
            .collect(),
    )
}

struct Shared {
    threads: usize,
    stop: AtomicBool,
    /// Threads with no block left to decode, feeding others' steps.
    helping: AtomicUsize,
    /// Spent step buffers, to decode into again (they stay in cache).
    free: Mutex<Vec<Vec<u8>>>,
    wake: (Mutex<()>, Condvar),
}

impl Shared {
    fn notify(&self) {
        if self.helping.load(Ordering::Relaxed) > 0 {
            self.wake.1.notify_all();
        }
    }
}

/// Feeds a lane's queued steps to its sink; false if another thread holds
/// the sink (and `wait` is false) or there was nothing to feed.
fn drain<S: Sink>(lane: &Lane<S>, shared: &Shared, wait: bool) -> bool {
    let sink = if wait {
        lane.sink.lock().ok()
    } else {
        lane.sink.try_lock().ok()
    };
    let Some(mut sink) = sink else {
        return false;
    };
    let mut fed = false;
    loop {
        let step = lane.queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(mut step) = step else {
            return fed;
        };
        fed = true;
        if !shared.stop.load(Ordering::Relaxed) && !sink.feed(&step) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        step.clear();
        if let Ok(mut free) = shared.free.lock() {
            free.push(step);
        }
    }
}

/// What a thread with no block left to decode does: feed the steps the
/// others decode until every block is decoded and fed.
fn help<S: Sink>(lanes: &[Lane<S>], shared: &Shared) {
    shared.helping.fetch_add(1, Ordering::Relaxed);
    loop {
        let mut fed = false;
        for lane in lanes {
            fed |= drain(lane, shared, false);
        }
        let finished = lanes.iter().all(|l| {
            l.decoded.load(Ordering::Acquire) && l.queue.lock().map_or(true, |q| q.is_empty())
        });
        if finished {
            break;
        }
        if !fed && let Ok(guard) = shared.wake.0.lock() {
            // Woken when a step or a block is done; the timeout covers a
            // wake-up sent just before this wait.
            let _ = shared.wake.1.wait_timeout(guard, Duration::from_millis(1));
        }
    }
    shared.helping.fetch_sub(1, Ordering::Relaxed);
    // Whatever a sink held when its decoder finished is fed by now; a lane
    // whose sink was busy at the last look is drained here.
    for lane in lanes {
        drain(lane, shared, true);
    }
}

fn stream_block<S: Sink>(
    f: &[u8],
    (index, block): (usize, &Block),
    lanes: &[Lane<S>],
    shared: &Shared,
) -> Result<(), String> {
    let lane = lanes.get(index).ok_or("no lane for the block")?;
    let (data, mut stream) = raw_decoder(f, block)?;
    let mut crc = crc_fast::Digest::new(CrcAlgorithm::Crc64Xz);
    let expected = block.out.len();
    let mut total = 0usize;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Err("stopped".into());
        }
        let mut buf = shared
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default();
        // The step ends past the block's end, so a block longer than its
        // index says is caught below.
        buf.reserve(STEP.min(expected - total + 1));
        let done_in = usize::try_from(stream.total_in()).map_err(|e| e.to_string())?;
        let status = stream
            .process_vec(
                data.get(done_in..).unwrap_or_default(),
                &mut buf,
                Action::Finish,
            )
            .map_err(|e| e.to_string())?;
        crc.update(&buf);
        total += buf.len();
        if total > expected {
            return Err("block longer than the index says".into());
        }
        let queued = {
            let mut queue = lane.queue.lock().map_err(|e| e.to_string())?;
            queue.push_back(buf);
            queue.len()
        };
        // The first block is the longest: while other threads decode the
        // rest they also feed its steps, so its own thread only decodes
        // (unless they fall behind). Other threads feed everything queued.
        if index == 0 && shared.threads > 1 {
            if queued > BACKLOG {
                drain(lane, shared, false);
            }
            shared.notify();
        } else {
            for lane in lanes {
                drain(lane, shared, false);
            }
        }
        match status {
            Status::StreamEnd => break,
            Status::MemNeeded => return Err("block data ends early or is too long".into()),
            Status::Ok | Status::GetCheck => {}
        }
    }
    if stream.total_in() != data.len() as u64 || total != expected {
        return Err("block sizes differ from the index".into());
    }
    if crc.finalize() != block.check {
        return Err("block CRC64 mismatch".into());
    }
    // What is still queued goes with this thread (it waits for a helper
    // that is feeding this lane).
    drain(lane, shared, true);
    Ok(())
}
