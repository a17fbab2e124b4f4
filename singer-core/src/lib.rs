//! The Singer protocol, with no database in it: messages, JSON-lines reading
//! and writing with line-numbered errors, the catalog and its metadata, state
//! and bookmarks, a JSON Schema model, and `INFO METRIC:` lines.
//!
//! ```no_run
//! use singer_core::{Message, MessageReader};
//! let stdin = std::io::stdin();
//! for item in MessageReader::new(stdin.lock()) {
//!     match item? {
//!         (_, Message::Record(r)) => println!("{}: {}", r.stream, r.record.get()),
//!         (line, other) => eprintln!("line {line}: {:?}", other.stream()),
//!     }
//! }
//! # Ok::<(), singer_core::ReadError>(())
//! ```

mod catalog;
pub mod cli;
pub mod config;
mod io;
pub mod logging;
mod message;
pub mod metrics;
pub mod progress;
mod schema;
mod state;

pub use catalog::{Catalog, CatalogEntry, CatalogError, MetadataEntry};
pub use config::{About, Config, ConfigError, DefaultValue, Setting, SettingKind};
pub use io::{
    push_json_string, write_json_string, MessageReader, MessageWriter, ReadError, ReadErrorKind,
    RecordFrame, WriteError,
};
pub use message::{
    parse_message, ActivateVersionMessage, Members, Message, MessageError, RecordMessage,
    RecordText, SchemaMessage, StateMessage,
};
pub use schema::{JsonSchema, SchemaError, SQL_DATATYPE_KEY};
pub use state::{State, StateError};
