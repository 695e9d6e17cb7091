//! Slack request signing: `v0=` + hex(HMAC-SHA256(secret, "v0:{timestamp}:{body}")).
//!
//! The same scheme signs jitgate's outgoing webhooks, so receivers can reuse Slack's
//! verification code.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Requests older or newer than this are refused (replay protection).
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a request was refused. Every variant is answered with a bare 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Slack-Request-Timestamp or X-Slack-Signature header")]
    MissingHeaders,
    #[error("timestamp is not a number")]
    BadTimestamp,
    #[error("timestamp is more than {MAX_SKEW_SECS}s from now")]
    Stale,
    #[error("signature is not v0=<hex>")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// The `v0=…` signature of `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a request's signature headers against its raw body, at time `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::MissingHeaders);
    };
    let ts: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
    // `abs_diff` cannot overflow, whatever the header says.
    if now.abs_diff(ts) > MAX_SKEW_SECS as u64 {
        return Err(SignatureError::Stale);
    }
    let hex_sig = signature.strip_prefix("v0=").ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    // verify_slice compares in constant time.
    mac(secret, timestamp.trim(), body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's documented example (see shared/SLACK.md); valid only with the clock pinned.
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXPECTED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn documented_example_vector_verifies_with_a_pinned_clock() {
        assert_eq!(sign(SECRET, TS, BODY.as_bytes()), EXPECTED);
        assert_eq!(
            verify(SECRET, Some(TS), Some(EXPECTED), BODY.as_bytes(), 1_531_420_618 + 10),
            Ok(())
        );
    }

    #[test]
    fn documented_example_is_stale_on_a_real_clock() {
        let now = chrono::Utc::now().timestamp();
        assert_eq!(
            verify(SECRET, Some(TS), Some(EXPECTED), BODY.as_bytes(), now),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn any_change_to_the_body_breaks_the_signature() {
        let mut body = BODY.as_bytes().to_vec();
        body[10] ^= 1;
        assert_eq!(
            verify(SECRET, Some(TS), Some(EXPECTED), &body, 1_531_420_618),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn skew_limit_is_enforced_both_ways() {
        let ts: i64 = TS.parse().unwrap();
        assert!(verify(SECRET, Some(TS), Some(EXPECTED), BODY.as_bytes(), ts + 300).is_ok());
        assert_eq!(
            verify(SECRET, Some(TS), Some(EXPECTED), BODY.as_bytes(), ts + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some(EXPECTED), BODY.as_bytes(), ts - 301),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        let ts: i64 = TS.parse().unwrap();
        assert_eq!(
            verify(SECRET, None, Some(EXPECTED), b"", ts),
            Err(SignatureError::MissingHeaders)
        );
        assert_eq!(
            verify(SECRET, Some(TS), None, b"", ts),
            Err(SignatureError::MissingHeaders)
        );
        assert_eq!(
            verify(SECRET, Some("abc"), Some(EXPECTED), b"", ts),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some("v1=00"), b"", ts),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some("v0=zz"), b"", ts),
            Err(SignatureError::Malformed)
        );
    }

    proptest::proptest! {
        /// No timestamp header and no clock, however far apart, can overflow the skew
        /// check; only timestamps within the window get past it.
        #[test]
        fn any_timestamp_and_clock_are_handled_without_overflow(ts in proptest::num::i64::ANY, now in proptest::num::i64::ANY) {
            let header = ts.to_string();
            let result = verify(SECRET, Some(&header), Some(EXPECTED), b"", now);
            if now.abs_diff(ts) > MAX_SKEW_SECS as u64 {
                proptest::prop_assert_eq!(result, Err(SignatureError::Stale));
            } else {
                proptest::prop_assert_eq!(result, Err(SignatureError::Mismatch));
            }
        }
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        for (ts, now) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (i64::MIN, 0), (0, i64::MIN)] {
            assert_eq!(
                verify(SECRET, Some(&ts.to_string()), Some(EXPECTED), b"", now),
                Err(SignatureError::Stale)
            );
        }
    }
}
