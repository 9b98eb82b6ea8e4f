//! Leases: the fencing token the master hands out with each job, and the (job, token) pair that
//! names one run of a job on a worker.
//!
//! The master stores tokens as UUIDs (`jobs.lease_token`); on the wire they are strings. A token is
//! parsed once, where it comes off the wire, and carried parsed from there on: the master and the
//! worker compare and key maps by [`LeaseToken`], never by its text.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::{WireError, wire};

/// The fencing token of one lease: the master accepts a result only under the job's current one.
///
/// On the wire it is a UUID in its hyphenated form (36 characters, either case); it prints in
/// lowercase, the form the master sends. Ordered like its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken(Uuid);

impl LeaseToken {
    /// Parse the token in `field` of a wire message; a bad one is an error naming the field.
    pub fn from_wire(field: &str, s: &str) -> Result<LeaseToken, WireError> {
        // the hyphenated form only: the other forms a UUID has are not lease tokens on the wire
        if s.len() == 36
            && let Ok(uuid) = Uuid::try_parse(s)
        {
            return Ok(LeaseToken(uuid));
        }
        Err(wire(field, format!("{s:?} is not a lease token")))
    }
}

impl FromStr for LeaseToken {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        LeaseToken::from_wire("lease_token", s)
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The master's database keeps tokens as UUIDs.
impl From<Uuid> for LeaseToken {
    fn from(uuid: Uuid) -> Self {
        LeaseToken(uuid)
    }
}

impl From<LeaseToken> for Uuid {
    fn from(token: LeaseToken) -> Self {
        token.0
    }
}

/// One lease: a job and the token it runs under. A job given out again gets a new token, so
/// the same job id may appear under two leases (the old one stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lease {
    pub job_id: u64,
    pub token: LeaseToken,
}

impl Lease {
    /// The lease a wire message names by `job_id` and the token in `field`.
    pub fn from_wire(job_id: u64, field: &str, token: &str) -> Result<Lease, WireError> {
        Ok(Lease {
            job_id,
            token: LeaseToken::from_wire(field, token)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_once_and_print_as_the_master_sends_them() {
        let text = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let token: LeaseToken = text.parse().unwrap();
        assert_eq!(token.to_string(), text);
        let upper = LeaseToken::from_wire("lease_token", &text.to_uppercase()).unwrap();
        assert_eq!(upper, token, "either case");
        let uuid = Uuid::from(token);
        assert_eq!(LeaseToken::from(uuid), token);
        assert_eq!(uuid.to_string(), text);

        for bad in [
            "x",
            "",
            "0f8fad5bd9cb469fa16570867728950e",
            "{0f8fad5b-d9cb-469f-a165-70867728950e}",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
        ] {
            let e = LeaseToken::from_wire("hello.running.lease_token", bad).unwrap_err();
            assert_eq!(e.field, "hello.running.lease_token", "{bad:?}");
            assert_eq!(e.message, format!("{bad:?} is not a lease token"));
        }
        assert!(
            LeaseToken::from_wire("lease_token", "0f8fad5b-d9cb-469f-a165-70867728950e").is_ok()
        );
        assert_eq!(
            LeaseToken::from_wire("lease_token", "x").unwrap_err().field,
            "lease_token"
        );
        assert_eq!("x".parse::<LeaseToken>().unwrap_err().field, "lease_token");
    }

    #[test]
    fn leases_order_like_their_text() {
        let tokens = [
            "00000000-0000-4000-8000-000000000002",
            "0000000a-0000-4000-8000-000000000001",
            "f0000000-0000-4000-8000-000000000000",
        ];
        let mut parsed: Vec<Lease> = tokens
            .iter()
            .rev()
            .map(|t| Lease::from_wire(1, "lease_token", t).unwrap())
            .collect();
        parsed.sort();
        let back: Vec<String> = parsed.iter().map(|l| l.token.to_string()).collect();
        assert_eq!(back, tokens);
        assert!(
            Lease::from_wire(1, "lease_token", tokens[2]).unwrap()
                < Lease::from_wire(2, "lease_token", tokens[0]).unwrap(),
            "by job first"
        );
    }
}
