//! An HTTP gate in front of one server instance, for failover tests that must not depend on
//! a sleep landing at the right moment: requests pass through one per connection
//! (`Connection: close` both ways), except those whose request line starts with a held
//! prefix, which wait until the test releases them. The test sees exactly how many are held
//! (in flight towards the instance), kills the instance, then releases them: each is then
//! forwarded to the dead instance, cannot connect, and its connection is closed without an
//! answer — what a client sees when the instance dies under its request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Requests seen, by request line.
    seen: Vec<String>,
    /// Their bodies, in the same order.
    bodies: Vec<Vec<u8>>,
    /// Requests held now.
    held: usize,
    released: bool,
}

/// The gate; it stops accepting when dropped (its threads end with their connections).
pub struct Gate {
    /// The gate's port on 127.0.0.1.
    pub port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Gate {
    /// A gate to `127.0.0.1:backend` holding requests whose request line starts with `hold`
    /// (e.g. `"POST /v1/holder/login "`).
    pub fn start(backend: u16, hold: &'static str) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = pass(conn, backend, hold, &st);
                });
            }
        });
        Gate { port, state }
    }

    /// The gate's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `n` requests are held (at most `limit`; panics after).
    pub fn wait_held(&self, n: usize, limit: Duration) {
        let (m, cv) = &*self.state;
        let start = Instant::now();
        let mut s = m.lock().unwrap();
        while s.held < n {
            let left = limit.saturating_sub(start.elapsed());
            assert!(
                !left.is_zero(),
                "only {} of {n} requests reached the gate: {:?}",
                s.held,
                s.seen
            );
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }

    /// Releases every held request (and passes later ones at once).
    pub fn release(&self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap().released = true;
        cv.notify_all();
    }

    /// The bodies of the requests so far whose request line starts with `prefix` (a signed
    /// message captured on its way, to be sent again).
    pub fn bodies(&self, prefix: &str) -> Vec<Vec<u8>> {
        let s = self.state.0.lock().unwrap();
        s.seen
            .iter()
            .zip(&s.bodies)
            .filter(|(l, _)| l.starts_with(prefix))
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// How many requests so far started with `prefix`.
    pub fn seen(&self, prefix: &str) -> usize {
        let s = self.state.0.lock().unwrap();
        s.seen.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// One request: read, maybe held, forwarded, its answer copied back; then the connection
/// closes.
fn pass(
    client: TcpStream,
    backend: u16,
    hold: &str,
    state: &(Mutex<State>, Condvar),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Ok(());
    }
    let mut head = line.clone();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if !lower.starts_with("connection:") {
            head.push_str(&h);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    {
        let (m, cv) = state;
        let mut s = m.lock().unwrap();
        s.seen.push(line.trim_end().to_string());
        s.bodies.push(body.clone());
        if line.starts_with(hold) {
            s.held += 1;
            cv.notify_all();
            while !s.released {
                s = cv.wait(s).unwrap();
            }
            s.held -= 1;
        }
    }
    // A dead backend: the client's connection closes without an answer.
    let mut up = TcpStream::connect(("127.0.0.1", backend))?;
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let mut client = client;
    client.write_all(&answer)?;
    Ok(())
}
