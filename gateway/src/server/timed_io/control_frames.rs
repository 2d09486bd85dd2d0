//! HTTP/2 frames a client can send without end at no cost to itself, each of which costs the
//! gateway work and leads to no request: PINGs and SETTINGS (each answered with an ACK), PRIORITY
//! frames, and empty DATA frames that do not end their stream (CVE-2019-9512, -9515, -9516,
//! -9518). h2 answers them itself and gives hyper no hook, and a PING costs 17 bytes, so a
//! client writing a buffer of them over and over kept a core busy answering and slowed every
//! other client's requests many times over. The bytes the client sends are read here on their
//! way to h2, frame headers only, and a connection that sends such frames faster than
//! [`REFILL_PER_SEC`] for longer than a burst of [`BURST`] is closed (Envoy has limits of this
//! kind too).

use std::time::Instant;

/// Such frames a connection may send at once: far above what browsers and HTTP/2 libraries send
/// on a connection's start and in a minute of keepalive PINGs.
pub(super) const BURST: u32 = 1_000;
/// The sustained rate it may send them at, per second.
pub(super) const REFILL_PER_SEC: u32 = 100;

/// The client connection preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), before the first frame.
const PREFACE_LEN: u32 = 24;
const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
/// ACK on SETTINGS and PING, END_STREAM on DATA.
const FLAG_ACK_OR_END_STREAM: u8 = 0x1;

/// Follows the frame boundaries of what an HTTP/2 client sends, and spends a token for each frame
/// of the kinds above.
#[derive(Debug)]
pub(super) struct ControlFrames {
    /// Bytes of the preface or of the current frame's payload still to skip.
    skip: u32,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    tokens: u32,
    refilled_at: Instant,
}

/// The client sent too many such frames (see the module docs).
#[derive(Debug, thiserror::Error)]
#[error("the client sent HTTP/2 control frames (PING, SETTINGS, PRIORITY, empty DATA) faster than {REFILL_PER_SEC} a second after a burst of {BURST}")]
pub(super) struct ControlFlood;

impl ControlFrames {
    pub(super) fn new() -> ControlFrames {
        ControlFrames {
            skip: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            tokens: BURST,
            refilled_at: Instant::now(),
        }
    }

    /// Reads the next bytes the client sent.
    pub(super) fn read(&mut self, mut bytes: &[u8]) -> Result<(), ControlFlood> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let skipped = bytes.len().min(self.skip as usize);
                bytes = &bytes[skipped..];
                self.skip -= skipped as u32;
                continue;
            }
            let taken = bytes.len().min(FRAME_HEADER_LEN - self.header_len);
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&bytes[..taken]);
            self.header_len += taken;
            bytes = &bytes[taken..];
            if self.header_len == FRAME_HEADER_LEN {
                self.header_len = 0;
                let [l0, l1, l2, kind, flags, ..] = self.header;
                let length = u32::from_be_bytes([0, l0, l1, l2]);
                self.skip = length;
                if costs_without_request(kind, flags, length) {
                    self.spend()?;
                }
            }
        }
        Ok(())
    }

    fn spend(&mut self) -> Result<(), ControlFlood> {
        if self.tokens == 0 {
            let now = Instant::now();
            let earned =
                now.saturating_duration_since(self.refilled_at).as_millis() * u128::from(REFILL_PER_SEC) / 1000;
            if earned == 0 {
                return Err(ControlFlood);
            }
            self.tokens = u32::try_from(earned).unwrap_or(BURST).min(BURST);
            self.refilled_at = now;
        }
        self.tokens -= 1;
        Ok(())
    }
}

fn costs_without_request(kind: u8, flags: u8, length: u32) -> bool {
    match kind {
        PING | SETTINGS => flags & FLAG_ACK_OR_END_STREAM == 0,
        PRIORITY => true,
        DATA => length == 0 && flags & FLAG_ACK_OR_END_STREAM == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn ping() -> Vec<u8> {
        frame(PING, 0, 0, &[7; 8])
    }

    #[test]
    fn a_burst_passes_and_a_flood_past_it_is_refused() {
        let mut meter = ControlFrames::new();
        let mut start = PREFACE.to_vec();
        start.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        meter.read(&start).unwrap();
        let pings: Vec<u8> = (1..BURST).flat_map(|_| ping()).collect();
        meter.read(&pings).unwrap();
        assert!(meter.read(&ping()).is_err(), "past the burst with no time to refill");
    }

    #[test]
    fn frames_split_across_reads_are_followed() {
        let mut meter = ControlFrames::new();
        let mut bytes = PREFACE.to_vec();
        // A large HEADERS frame and its payload, then PINGs: only the PINGs count.
        bytes.extend(frame(0x1, 0x4, 1, &[0x82; 3000]));
        for _ in 0..BURST {
            bytes.extend(ping());
        }
        for piece in bytes.chunks(7) {
            meter.read(piece).unwrap();
        }
        assert_eq!(meter.tokens, 0);
        assert!(meter.read(&ping()).is_err());
    }

    #[test]
    fn acks_requests_and_data_that_carries_bytes_cost_nothing() {
        let mut meter = ControlFrames::new();
        meter.read(PREFACE).unwrap();
        for _ in 0..(3 * BURST) {
            meter.read(&frame(PING, FLAG_ACK_OR_END_STREAM, 0, &[0; 8])).unwrap();
            meter.read(&frame(SETTINGS, FLAG_ACK_OR_END_STREAM, 0, &[])).unwrap();
            meter.read(&frame(DATA, 0, 1, b"x")).unwrap();
            meter.read(&frame(DATA, FLAG_ACK_OR_END_STREAM, 1, &[])).unwrap();
            meter.read(&frame(0x8, 0, 0, &[0, 0, 1, 0])).unwrap();
        }
        assert_eq!(meter.tokens, BURST);
    }

    #[test]
    fn the_budget_refills_with_time() {
        let mut meter = ControlFrames::new();
        meter.read(PREFACE).unwrap();
        meter.tokens = 0;
        meter.refilled_at = Instant::now() - std::time::Duration::from_secs(1);
        for _ in 0..REFILL_PER_SEC {
            meter.read(&frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16])).unwrap();
        }
        assert!(meter.read(&frame(DATA, 0, 1, &[])).is_err());
    }
}
