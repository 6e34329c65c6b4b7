//! Build the reference `aug-wo-pc` training row of one sample and print its structure.
//!
//! `cargo run --example lt_data_build [-- TOKENIZER_JSON]` (default: the set-up's Qwen2.5 tokenizer).
use lt_data::{collate, BuildOptions, Builder, CompressConfig, LtTokenizer, PadTo, TrainSample};

fn main() -> anyhow::Result<()> {
    let tok_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ".cache/qwen2.5-tokenizer/tokenizer.json".into());
    let cfg = CompressConfig::from_file("configs/LightThinker/qwen/v1.json")?;
    let mut tok = LtTokenizer::from_file(&tok_path)?;
    for (t, id, desc) in tok.add_special_tokens(&cfg) {
        println!("added {t:?} = {id} (init from {desc:?})");
    }
    let question = "Return your final response within \\boxed{}. What is 6 * 7?".to_string();
    let sample = TrainSample {
        question: question.clone(),
        system_prompt: lt_data::system_prompt(),
        system_list: lt_data::SYSTEM_PROMPT_LIST
            .iter()
            .map(|s| s.to_string())
            .collect(),
        question_list: vec![question],
        thoughts_list: vec![
            "<|begin_of_thought|>".into(),
            "6 * 7 = 42.".into(),
            "<|end_of_thought|>".into(),
            "<|begin_of_solution|>".into(),
            "\\boxed{42}".into(),
            "<|end_of_solution|>".into(),
        ],
        gt_output: String::new(),
        add_eos: None,
        meta_info: Default::default(),
    };
    let opts = BuildOptions::reference("qwen");
    let flags = opts.effective_flags();
    let builder = Builder::new(&cfg, &tok, opts)?;
    let rows = builder.build(&sample)?;
    let row = &rows[0];
    println!("{} tokens, {} supervised", row.len(), row.n_labelled());
    for b in &row.layout.as_ref().expect("aug-wo-pc has a layout").blocks {
        let ids: Vec<u32> = row.input_ids[b.start..b.end]
            .iter()
            .map(|&x| x as u32)
            .collect();
        println!(
            "thought [{}, {}) -> cache [{}, {}): {:?}",
            b.start,
            b.end,
            b.cache_start(),
            b.cache_end(),
            tok.decode(&ids)
        );
    }
    let batch = collate(&rows, &flags, PadTo::Longest, builder.eos_id() as i64)?;
    let mask = &batch.masks.as_ref().expect("masks")[0];
    let last = row.len() - 1;
    println!("last token sees {:?}", mask.row(last));
    Ok(())
}
