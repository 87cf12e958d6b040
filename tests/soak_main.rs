//! The soak test's own binary (`cargo test --release --test soak`, run by
//! scripts/soak.sh): the test is in `soak/`, the helpers it shares with the integration
//! suite in `common/`.

// `pub`: the soak uses a part of the shared helpers; the rest is not dead code here (the
// integration binary, where `common` is private, is what flags an unused helper).
pub mod common;
mod soak;
