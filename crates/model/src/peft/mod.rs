//! Parameter-efficient fine-tuning methods, laid out as HF peft lays them out so adapters can
//! be exchanged with Python.

pub mod prefix;
