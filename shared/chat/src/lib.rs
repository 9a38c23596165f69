//! The chat gateway capability: providers, fallback chain, streams, sessions, usage.

pub mod chat;

use chatkb_adapters::{openai, store};
use chatkb_core::{canonical, observability, secret};
use chatkb_kb::kb;
use chatkb_resilience::{cache, resilience};
