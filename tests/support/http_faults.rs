//! An HTTP/1.1 relay in front of the object store for the fault tests: it
//! answers the next N requests, or every request of one method until
//! healed, with `503 Service Unavailable` itself, or relays the next PUT to
//! the store and then closes the
//! client's connection without its answer (the object is stored, the
//! client cannot know). Every request goes to the store on a connection of
//! its own (`Connection: close` added), so responses are relayed as they
//! come, whatever their framing. Requests need a `Content-Length` body
//! (what the S3 client sends). It keeps the request lines, for tests that
//! count requests. Loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Shared {
    fail_next: AtomicUsize,
    /// Every request of this method fails (`GET`, `PUT`, `DELETE`...).
    fail_method: Mutex<Option<&'static str>>,
    lose_next_put: AtomicUsize,
    failed: AtomicUsize,
    lost: AtomicUsize,
    /// The request lines seen (`METHOD PATH HTTP/1.1`), oldest first.
    requests: Mutex<Vec<String>>,
}

/// The relay; runs until the process ends (threads are detached).
pub struct HttpFaults {
    port: u16,
    shared: Arc<Shared>,
}

impl HttpFaults {
    pub fn start(upstream_port: u16) -> HttpFaults {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP relay");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream_port, &s);
                });
            }
        });
        HttpFaults { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next `n` requests get a 503 from the relay.
    pub fn fail_next(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every request of `method` (`GET` also covers LIST) gets a 503 until
    /// [`HttpFaults::heal`].
    pub fn fail_method(&self, method: &'static str) {
        *self.shared.fail_method.lock().unwrap() = Some(method);
    }

    /// Requests of every method reach the store again.
    pub fn heal(&self) {
        *self.shared.fail_method.lock().unwrap() = None;
    }

    /// The next `n` PUTs reach the store; their answers are lost.
    pub fn lose_next_put_answers(&self, n: usize) {
        self.shared.lose_next_put.store(n, Ordering::SeqCst);
    }

    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }

    pub fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// The request lines seen since the last call (`PUT /bucket/key
    /// HTTP/1.1`), oldest first.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.requests.lock().unwrap())
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn serve(client: TcpStream, upstream_port: u16, s: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        // One request: headers, then a Content-Length body.
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if !lower.starts_with("connection:") {
                head.push_str(&line);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        if let Some(line) = head.lines().next() {
            s.requests.lock().unwrap().push(line.trim_end().to_string());
        }
        let method_fails = s
            .fail_method
            .lock()
            .unwrap()
            .is_some_and(|m| head.starts_with(&format!("{m} ")));
        if method_fails || take(&s.fail_next) {
            s.failed.fetch_add(1, Ordering::SeqCst);
            client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let is_put = head.starts_with("PUT ");
        let mut up = TcpStream::connect(("127.0.0.1", upstream_port))?;
        up.write_all(head.as_bytes())?;
        up.write_all(b"Connection: close\r\n\r\n")?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        if is_put && take(&s.lose_next_put) {
            s.lost.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        client.write_all(&answer)?;
        // The store closed its side: so does the relay (the answer says
        // `Connection: close`).
        return Ok(());
    }
}
