//! Sender constraints: proof that the caller of a resource holds a key, so a stolen token is
//! useless on its own. `dpop.rs` implements RFC 9449 proofs.

pub mod dpop;
