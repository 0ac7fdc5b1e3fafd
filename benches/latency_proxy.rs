//! A TCP delay line for the end-to-end benchmark's `--latency-ms`: it sits
//! on 127.0.0.1 between the backup tools and the S3 server and holds every
//! byte it forwards for a fixed one-way delay, in each direction, as a long
//! link does (netem's `delay`, which this machine's kernel lacks).
//!
//! ```text
//! coffer-latency-proxy LISTEN UPSTREAM ONE_WAY_MS
//! coffer-latency-proxy 127.0.0.1:0 127.0.0.1:8333 10    # 20 ms per round trip
//! ```
//!
//! Prints `listening on ADDR` once it accepts connections, then serves until
//! killed. `ONE_WAY_MS` may have a fraction (`2.5`); 0 forwards at once
//! (to measure what the extra hop itself costs).
//!
//! Why a delay line and not a sleep per request: every tool then pays the
//! same latency for what it actually does on the wire (one round trip per
//! sequential request, none for requests in flight together, one for a new
//! connection's handshake), whatever its HTTP client, and bandwidth is not
//! limited: bytes read at time t are written at t + delay while later bytes
//! are already being read.
//!
//! Why plain threads and blocking sockets, not tokio: the delay must be
//! exact. tokio's timer has a 1 ms resolution and rounds up, which measured
//! here added 1.1–1.3 ms to each direction (22.5 ms per round trip instead
//! of 20); `thread::sleep` wakes within tens of microseconds. It stays light
//! on the CPU: four threads per connection, each asleep in the kernel
//! (reading, sleeping, or writing) but for handing pieces over, and large
//! pieces change threads without being copied.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The most one read takes from a socket. Large, so a fast stream costs few
/// reads; a read returns what is there, so a small message is not held back.
const READ_SIZE: usize = 256 * 1024;

/// Bytes held per direction of a connection before the proxy stops reading
/// (the receiver is slower than the sender). Far above bandwidth × delay for
/// any link this emulates (1 GB/s × 20 ms = 20 MB), so it never caps
/// throughput, but memory stays bounded and TCP flow control still reaches
/// the sender.
const IN_FLIGHT: usize = 64 << 20;

/// Pieces smaller than this are copied out of the read buffer; larger ones
/// take the buffer itself along (no copy), and the reader takes a spare: a
/// buffer a writer is done with, or a new one (zeroing new buffers took 11 %
/// of the proxy's CPU when each direction kept only two spares).
const COPY_BELOW: usize = 16 * 1024;

/// Read buffers writers are done with, shared by all connections: at most
/// `SPARES` (16 MiB) are kept, about what 20 ms at 1 GB/s holds in flight.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const SPARES: usize = 64;

fn spare_buffer() -> Vec<u8> {
    let spare = SPARE.lock().unwrap_or_else(|e| e.into_inner()).pop(); // unlocked here
    spare.unwrap_or_else(|| vec![0u8; READ_SIZE])
}

fn give_back(buf: Vec<u8>) {
    let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < SPARES {
        spare.push(buf);
    }
}

/// One direction's bytes read and not yet written, shared by its two threads.
#[derive(Default)]
struct Budget {
    /// (bytes held, whether the writing thread has stopped)
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Budget {
    /// Waits until `n` more bytes may be held; false once the writer is gone.
    fn take(&self, n: usize) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.0 > 0 && state.0 + n > IN_FLIGHT && !state.1 {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.0 += n;
        !state.1
    }

    fn give(&self, n: usize, stopped: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= n;
        state.1 |= stopped;
        self.changed.notify_one();
    }
}

/// Bytes read (`len` 0: the end of the stream) and when they may leave.
struct Piece {
    data: Vec<u8>,
    len: usize,
    due: Instant,
}

impl Piece {
    /// What the piece holds of the direction's budget: its bytes, or a whole
    /// read buffer (so at least IN_FLIGHT / READ_SIZE = 256 pieces fit).
    fn held(&self) -> usize {
        self.data.len().max(self.len)
    }
}

/// The delay line's entrance: reads `from` and queues what it reads, due
/// `delay` after it arrived, but not before `not_before`.
fn read_side(mut from: TcpStream, to: Sender<Piece>, budget: Arc<Budget>, delay: Duration, not_before: Instant) {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A reset counts as the end of the stream: the other side then
            // sees a clean close, after the delay, which is all a benchmark needs.
            Err(_) => 0,
        };
        let due = Instant::now().max(not_before) + delay;
        let piece = if n < COPY_BELOW {
            Piece { data: buf[..n].to_vec(), len: n, due }
        } else {
            Piece { data: std::mem::replace(&mut buf, spare_buffer()), len: n, due }
        };
        if !budget.take(piece.held()) || to.send(piece).is_err() || n == 0 {
            return;
        }
    }
}

/// The delay line's exit: writes each piece once it is due. Pieces are due
/// in the order they were read, so nothing overtakes.
fn write_side(mut to: TcpStream, from: Receiver<Piece>, budget: Arc<Budget>) {
    for piece in from {
        if let Some(wait) = piece.due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if piece.len == 0 {
            let _ = to.shutdown(Shutdown::Write); // pass the FIN on, delayed too
            break;
        }
        let written = to.write_all(&piece.data[..piece.len]).is_ok();
        budget.give(piece.held(), !written);
        if !written {
            return;
        }
        if piece.data.len() == READ_SIZE {
            give_back(piece.data);
        }
    }
    budget.give(0, true);
}

/// One direction of a connection: a reading and a writing thread, or with
/// no delay a single thread that copies (handing each piece from one thread
/// to the other costs two wake-ups, which only a delay justifies).
fn direction(mut from: TcpStream, mut to: TcpStream, delay: Duration, not_before: Instant) {
    if delay.is_zero() {
        thread::spawn(move || {
            let mut buf = vec![0u8; READ_SIZE];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
        return;
    }
    let (tx, rx) = channel();
    let budget = Arc::new(Budget::default());
    let writer_budget = Arc::clone(&budget);
    thread::spawn(move || write_side(to, rx, writer_budget));
    thread::spawn(move || read_side(from, tx, budget, delay, not_before));
}

/// Forwards one accepted connection through two delay lines.
fn serve(client: TcpStream, upstream: SocketAddr, delay: Duration) -> std::io::Result<()> {
    let accepted = Instant::now();
    let server = TcpStream::connect(upstream)?;
    // Small writes leave at once, as from a real store's socket; without it
    // a response written in two parts waits for a delayed ACK (40 ms).
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // The client's connect() returned at once, but on a real link the
    // handshake takes a round trip before the first byte can be sent: its
    // bytes leave no earlier than one round trip after the accept.
    direction(client.try_clone()?, server.try_clone()?, delay, accepted + 2 * delay);
    direction(server, client, delay, accepted);
    Ok(())
}

fn usage(msg: &str) -> ! {
    eprintln!("coffer-latency-proxy: {msg}");
    eprintln!("usage: coffer-latency-proxy LISTEN_ADDR UPSTREAM_ADDR ONE_WAY_DELAY_MS");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, delay_ms] = args.as_slice() else { usage("expected three arguments") };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|_| usage("UPSTREAM_ADDR: not an IP:PORT address"));
    let delay = delay_ms
        .parse::<f64>()
        .ok()
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
        .unwrap_or_else(|| usage("ONE_WAY_DELAY_MS: not a number of milliseconds ≥ 0"));
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| usage(&format!("cannot listen on {listen}: {e}")));
    let addr = listener.local_addr().unwrap_or_else(|e| usage(&e.to_string()));
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        thread::spawn(move || {
            if let Err(e) = serve(client, upstream, delay) {
                eprintln!("coffer-latency-proxy: connection to {upstream}: {e}");
            }
        });
    }
}
