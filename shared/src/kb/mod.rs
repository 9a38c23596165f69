pub mod embed;
pub mod rank;
pub mod text;
