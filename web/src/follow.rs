//! Follows the market's and settlement's `/events` streams (server-sent events) and wakes the
//! refresher on every event, so pages update as soon as an interval clears or a block lands.
//!
//! A dropped or refused stream is retried with backoff; polling carries on meanwhile.

use crate::hub::Hub;
use crate::upstream::Upstream;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One parsed server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name (`message` when absent).
    pub event: String,
    /// The `data:` lines joined with newlines.
    pub data: String,
}

/// An incremental SSE parser: feed bytes, take complete events.
///
/// Bytes are buffered until a whole line has arrived and only then decoded, so a character
/// whose UTF-8 bytes are split across chunks (network reads cut anywhere) arrives intact.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds a chunk and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
            let bytes: Vec<u8> = self.buffer.drain(..=pos).collect();
            // A whole line: only bytes that are invalid in themselves are replaced.
            let line = String::from_utf8_lossy(&bytes);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    out.push(SseEvent {
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

/// Follows `upstream`'s `/events` until `token` is cancelled.
pub async fn follow(hub: Arc<Hub>, upstream: Upstream, token: CancellationToken) {
    let url = upstream.url("/events");
    let mut backoff = Duration::from_millis(250);
    loop {
        let attempt = async {
            let mut response = upstream
                .http()
                .get(&url)
                .header("accept", "text/event-stream")
                // The request timeout is for REST calls; a stream stays open.
                .timeout(Duration::from_secs(24 * 3600))
                .send()
                .await?
                .error_for_status()?;
            let mut parser = SseParser::default();
            while let Some(chunk) = response.chunk().await? {
                for event in parser.feed(&chunk) {
                    hub.metrics.upstream_events.inc();
                    tracing::debug!(service = upstream.service().name(), event = %event.event, "upstream event");
                    hub.wake(&event.event);
                }
            }
            Ok::<(), reqwest::Error>(())
        };
        tokio::select! {
            _ = token.cancelled() => return,
            outcome = attempt => {
                match outcome {
                    Ok(()) => backoff = Duration::from_millis(250),
                    Err(e) => tracing::debug!(service = upstream.service().name(), error = %e, "event stream unavailable"),
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: res").is_empty());
        let events = p.feed(b"ult\ndata: {\"a\":1}\ndata: x\r\n\r\ndata: plain\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "result".into(),
                    data: "{\"a\":1}\nx".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "plain".into()
                },
            ]
        );
    }

    /// Regression: each chunk used to be decoded on its own, so a character whose bytes were
    /// split between two network reads became two U+FFFD replacement characters.
    #[test]
    fn characters_split_across_chunks_arrive_intact() {
        let text = "event: alert\ndata: {\"reason\":\"Überschuss 5 °C ☀ 🌞\"}\n\n";
        let bytes = text.as_bytes();
        let expected = vec![SseEvent {
            event: "alert".into(),
            data: "{\"reason\":\"Überschuss 5 °C ☀ 🌞\"}".into(),
        }];
        // Every split point, including inside each multi-byte character.
        for cut in 0..=bytes.len() {
            let mut p = SseParser::default();
            let mut events = p.feed(&bytes[..cut]);
            events.extend(p.feed(&bytes[cut..]));
            assert_eq!(events, expected, "split at byte {cut}");
        }
        // One byte at a time.
        let mut p = SseParser::default();
        let events: Vec<SseEvent> = bytes.iter().flat_map(|b| p.feed(&[*b])).collect();
        assert_eq!(events, expected);
    }
}
