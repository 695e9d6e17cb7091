//! A fake Socket Mode server: plain `ws://` on a loopback port, speaking Slack's envelope
//! protocol. Every connection needs a fresh single-use ticket from the fake's
//! `apps.connections.open`; it is greeted with `hello`; the test sends envelopes
//! (`slash_commands`, `interactive`, `events_api`) to any open connection, reads the acks
//! the app sends back, and can send `disconnect` or drop every socket without a close
//! frame, as Slack does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// An acknowledgement the app sent.
#[derive(Debug, Clone)]
pub struct Ack {
    pub envelope_id: String,
    /// The ack's `payload` (a slash command's reply), if any.
    pub payload: Option<Value>,
}

enum Out {
    Text(String),
    /// Close the TCP connection without a WebSocket close frame.
    Drop,
}

struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Out>,
}

#[derive(Default)]
struct Inner {
    tickets: HashSet<String>,
    next_ticket: u64,
    conns: Vec<Conn>,
    accepted: u64,
    refused: u64,
    acks: Vec<Ack>,
    next_envelope: u64,
    next_conn: usize,
}

/// The fake's handle. Cheap to clone.
#[derive(Clone)]
pub struct FakeSocket {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeSocket {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the fake Socket Mode server");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let fake = Self {
            addr,
            inner: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(server.clone().serve(stream));
            }
        });
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new single-use connection URL, as `apps.connections.open` returns it.
    pub fn new_url(&self) -> String {
        let mut g = self.lock();
        g.next_ticket += 1;
        let ticket = format!("fake-ticket-{}-{}", g.next_ticket, rand::random::<u32>());
        g.tickets.insert(ticket.clone());
        format!("ws://{}/link/?ticket={ticket}&app_id=A0APP", self.addr)
    }

    async fn serve(self, stream: tokio::net::TcpStream) {
        let inner = self.inner.clone();
        // The callback's signature is tungstenite's; its error type is what it is.
        #[allow(clippy::result_large_err)]
        let check_ticket = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let ticket = req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("ticket="))
                .unwrap_or_default()
                .to_string();
            let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.tickets.remove(&ticket) {
                Ok(resp)
            } else {
                g.refused += 1;
                let mut refusal = ErrorResponse::new(Some("invalid or used ticket".into()));
                *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check_ticket).await else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (id, count) = {
            let mut g = self.lock();
            g.accepted += 1;
            let id = g.accepted;
            g.conns.push(Conn { id, tx });
            (id, g.conns.len())
        };
        let (mut sink, mut stream) = ws.split();
        let hello = json!({
            "type": "hello",
            "num_connections": count,
            "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
            "connection_info": {"app_id": "A0APP"}
        });
        if sink.send(Message::text(hello.to_string())).await.is_ok() {
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(Out::Text(text)) => {
                            if sink.send(Message::text(text)).await.is_err() {
                                break;
                            }
                        }
                        Some(Out::Drop) | None => break,
                    },
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                                if let Some(envelope_id) = v["envelope_id"].as_str() {
                                    let payload = v.get("payload").cloned();
                                    self.lock().acks.push(Ack { envelope_id: envelope_id.into(), payload });
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
        }
        self.lock().conns.retain(|c| c.id != id);
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    /// Connection attempts refused for a bad or reused ticket.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// Sends an envelope of `kind` with a new envelope id to one open connection (in
    /// turn); returns its id, or None when no connection is open.
    pub fn send(&self, kind: &str, payload: Value) -> Option<String> {
        let id = {
            let mut g = self.lock();
            g.next_envelope += 1;
            format!("env-{}-{}", g.next_envelope, rand::random::<u16>())
        };
        self.send_envelope(&id, kind, payload, 0).then_some(id)
    }

    /// Sends an envelope with a given id and `retry_attempt` (a re-delivery when > 0).
    /// False when no connection is open.
    pub fn send_envelope(&self, envelope_id: &str, kind: &str, payload: Value, retry_attempt: u32) -> bool {
        let envelope = json!({
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind == "slash_commands" || kind == "interactive",
            "retry_attempt": retry_attempt,
            "retry_reason": if retry_attempt > 0 { "timeout" } else { "" },
        });
        let mut g = self.lock();
        if g.conns.is_empty() {
            return false;
        }
        g.next_conn = (g.next_conn + 1) % g.conns.len();
        let conn = &g.conns[g.next_conn];
        conn.tx.send(Out::Text(envelope.to_string())).is_ok()
    }

    /// Every ack received so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.lock().acks.clone()
    }

    /// The acks received for `envelope_id`.
    pub fn acks_of(&self, envelope_id: &str) -> Vec<Ack> {
        self.acks()
            .into_iter()
            .filter(|a| a.envelope_id == envelope_id)
            .collect()
    }

    /// Sends `{"type":"disconnect","reason":reason}` on every open connection, leaving
    /// them open (Slack closes them a little later).
    pub fn disconnect_all(&self, reason: &str) {
        let text = json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}).to_string();
        for c in &self.lock().conns {
            let _ = c.tx.send(Out::Text(text.clone()));
        }
    }

    /// Drops every open connection without a close frame (a network failure).
    pub fn drop_all(&self) {
        for c in &self.lock().conns {
            let _ = c.tx.send(Out::Drop);
        }
    }
}
