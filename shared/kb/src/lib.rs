//! The knowledge base capability: chunking, embedding, per-dialect stores, hybrid search.

pub mod kb;

use chatkb_adapters::{openai, store};
use chatkb_core::{canonical, observability, secret};
use chatkb_resilience::{cache, resilience};
