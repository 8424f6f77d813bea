//! Stripe webhook signatures: the `Stripe-Signature` header, checked the
//! way Stripe defines it, and produced the same way for the load generator
//! and the tests.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, where each
//! `v1` is the lowercase hex HMAC-SHA256 of `"<t>.<raw body>"` keyed with the
//! endpoint's secret (the whole `whsec_...` string). While a secret is being
//! rolled Stripe sends one `v1` per active secret, so a request is accepted
//! when any of them matches. Other schemes (`v0`, ...) are ignored.
#![allow(dead_code)]

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The header Stripe signs webhooks in.
pub const HEADER: &str = "stripe-signature";

/// How far a signature's timestamp may be from the receiver's clock, either
/// way, before it is refused as a replay (Stripe's own default).
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. Each variant is a distinct JSON `code` and
/// log line, so a sender can tell which part to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    Missing,
    /// The header is there but not `t=<unix seconds>,v1=<64 hex digits>...`.
    Malformed(&'static str),
    /// Well-formed, but no `v1` matches this body under the secret.
    Mismatch,
    /// The signature matches, but its timestamp is outside [`TOLERANCE`].
    Expired {
        /// Seconds between the timestamp and the receiver's clock.
        skew_secs: u64,
    },
}

impl SignatureError {
    /// A stable machine-readable name for the JSON body and the log.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed(_) => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::Expired { .. } => "signature_expired",
        }
    }
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Missing => f.write_str("missing Stripe-Signature header"),
            SignatureError::Malformed(what) => write!(f, "malformed Stripe-Signature header: {what}"),
            SignatureError::Mismatch => {
                f.write_str("wrong signature: no v1 signature matches this body and secret")
            }
            SignatureError::Expired { skew_secs } => write!(
                f,
                "signature timestamp is {skew_secs} s away from now (more than {} s): possible replay",
                TOLERANCE.as_secs()
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Checks `header` (the raw `Stripe-Signature` value, if any) for `body`
/// under `secret`, with `now` in Unix seconds.
///
/// The comparison is constant-time (`Mac::verify_slice`), so how much of a
/// guess matched does not show in the response time.
///
/// # Errors
///
/// [`SignatureError`] naming what is missing, malformed, wrong or too old.
pub fn verify(
    header: Option<&[u8]>,
    body: &[u8],
    secret: &str,
    now: u64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed("not UTF-8"))?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            return Err(SignatureError::Malformed("an item is not key=value"));
        };
        match key {
            "t" => {
                let t: u64 = value
                    .parse()
                    .map_err(|_| SignatureError::Malformed("t is not a Unix time in seconds"))?;
                if timestamp.replace(t).is_some() {
                    return Err(SignatureError::Malformed("more than one t"));
                }
            }
            "v1" => {
                let bytes = hex::decode(value)
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or(SignatureError::Malformed("v1 is not 64 hex digits"))?;
                signatures.push(bytes);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t=<timestamp>"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    let mac = signed_payload_mac(secret, timestamp, body);
    // Each candidate is checked in constant time; which one matched (or how
    // many there were) is not secret.
    if !signatures
        .iter()
        .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    let skew_secs = now.abs_diff(timestamp);
    if skew_secs > TOLERANCE.as_secs() {
        return Err(SignatureError::Expired { skew_secs });
    }
    Ok(())
}

/// The `Stripe-Signature` value for `body` sent at `timestamp` (Unix
/// seconds), with one `v1` per secret, in order.
pub fn sign(secrets: &[&str], timestamp: u64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let tag = signed_payload_mac(secret, timestamp, body)
            .finalize()
            .into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex::encode(tag));
    }
    header
}

/// HMAC-SHA256 keyed with `secret`, fed `"<timestamp>.<body>"`.
fn signed_payload_mac(secret: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
