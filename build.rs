//! Compiles the gRPC contract, its JSON mapping and the JSON schemas of the
//! HTTP API, and keeps its descriptor set for server reflection.
//!
//! The proto files are parsed by protox, a protobuf compiler in Rust that
//! bundles the well-known types (`google/protobuf/duration.proto`, ...), so
//! the build needs no system `protoc` and no `libprotobuf-dev`.
//!
//! pbjson-build writes serde implementations that follow the protobuf JSON
//! mapping (field names as in the proto, 64-bit integers as strings, enums
//! by name, Timestamp in RFC 3339, every field written): the one mapping the
//! HTTP API, the CLI's `--json` and the load tool's reports share. The
//! well-known types come from pbjson-types, which implement it too.
//!
//! The messages the HTTP API carries derive `utoipa::ToSchema`, so its
//! OpenAPI document is generated from the same types; what the JSON mapping
//! writes differently from the Rust type (a u64 as a string, an enum by
//! name, a Timestamp as text) is told to utoipa field by field, from the
//! descriptors, and each enum's schema lists its names.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};

const PACKAGE: &str = ".stocklock.v1";

/// The bodies of the HTTP API: requests (whose fields are all optional in
/// JSON) and responses (which write every field).
const HTTP_REQUESTS: [&str; 6] =
    ["LockRequest", "BatchLockRequest", "RenewRequest", "ReleaseRequest", "CommitRequest", "TransferLockRequest"];
const HTTP_RESPONSES: [&str; 9] = [
    "LockResponse",
    "BatchLockResponse",
    "RenewResponse",
    "ReleaseResponse",
    "CommitResponse",
    "TransferLockResponse",
    "GetLockResponse",
    "StockRecord",
    "StockKey",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["proto/stocklock/v1/stocklock.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let encoded = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("stocklock_descriptor.bin"), &encoded)?;

    let messages: HashMap<String, &DescriptorProto> = descriptors
        .file
        .iter()
        .filter(|f| f.package() == &PACKAGE[1..])
        .flat_map(|f| f.message_type.iter())
        .map(|m| (format!("{PACKAGE}.{}", m.name()), m))
        .collect();
    let enums: HashMap<String, Vec<String>> = descriptors
        .file
        .iter()
        .filter(|f| f.package() == &PACKAGE[1..])
        .flat_map(|f| f.enum_type.iter())
        .map(|e| (format!("{PACKAGE}.{}", e.name()), e.value.iter().map(|v| v.name().to_owned()).collect()))
        .collect();
    let requests = reachable(&messages, &HTTP_REQUESTS);
    let responses = reachable(&messages, &HTTP_RESPONSES);

    let mut config =
        tonic_prost_build::configure().compile_well_known_types(true).extern_path(".google.protobuf", "::pbjson_types");
    let mut used_enums = BTreeSet::new();
    for name in requests.union(&responses) {
        config = config.type_attribute(name, "#[derive(utoipa::ToSchema)]");
        let only_in_requests = !responses.contains(name);
        for field in &messages[name].field {
            let mut schema = Vec::new();
            if let Some(value_type) = json_value_type(field, &messages, &mut used_enums) {
                schema.push(value_type);
            }
            if only_in_requests {
                // Absent fields take their defaults.
                schema.push("required = false".to_owned());
            }
            if !schema.is_empty() {
                let path = format!("{name}.{}", field.name());
                config = config.field_attribute(path, format!("#[schema({})]", schema.join(", ")));
            }
        }
    }
    config.compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[PACKAGE])?;

    // Each enum the HTTP API carries: a string schema of its names.
    let mut code = String::new();
    for name in &used_enums {
        let rust = name.rsplit('.').next().unwrap_or_default();
        let values: Vec<String> = enums[name].iter().map(|v| format!("{v:?}")).collect();
        writeln!(
            code,
            "impl utoipa::PartialSchema for {rust} {{
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {{
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some([{}]))
            .into()
    }}
}}
impl utoipa::ToSchema for {rust} {{}}",
            values.join(", ")
        )?;
    }
    std::fs::write(out_dir.join("stocklock.v1.schema.rs"), code)?;
    Ok(())
}

/// The messages of the package reachable from `roots` through message fields.
fn reachable(messages: &HashMap<String, &DescriptorProto>, roots: &[&str]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.iter().map(|r| format!("{PACKAGE}.{r}")).collect();
    while let Some(name) = todo.pop() {
        let Some(message) = messages.get(&name) else { continue };
        if !seen.insert(name) {
            continue;
        }
        for field in &message.field {
            if field.r#type() == Type::Message && field.type_name().starts_with(PACKAGE) {
                todo.push(field.type_name().to_owned());
            }
        }
    }
    seen
}

/// utoipa's `value_type` for a field whose JSON is not what its Rust type
/// says, in the protobuf JSON mapping; None where they agree.
fn json_value_type(
    field: &FieldDescriptorProto,
    messages: &HashMap<String, &DescriptorProto>,
    used_enums: &mut BTreeSet<String>,
) -> Option<String> {
    let repeated = field.label() == Label::Repeated;
    if field.r#type() == Type::Message
        && let Some(entry) =
            messages.get(field.type_name()).filter(|m| m.options.as_ref().is_some_and(|o| o.map_entry()))
    {
        // A map: keys are strings in JSON; values as a single field.
        let value = entry.field.iter().find(|f| f.name() == "value")?;
        let value = json_value_type(value, messages, used_enums).unwrap_or_else(|| "String".to_owned());
        return Some(format!(
            "value_type = std::collections::HashMap<String, {}>",
            value.trim_start_matches("value_type = ")
        ));
    }
    let (inner, format) = match field.r#type() {
        Type::Int64 | Type::Uint64 | Type::Sint64 | Type::Fixed64 | Type::Sfixed64 => ("String".to_owned(), None),
        Type::Bytes => ("String".to_owned(), Some("Byte")),
        Type::Enum => {
            used_enums.insert(field.type_name().to_owned());
            (field.type_name().rsplit('.').next().unwrap_or_default().to_owned(), None)
        }
        Type::Message if field.type_name() == ".google.protobuf.Timestamp" => ("String".to_owned(), Some("DateTime")),
        Type::Message if field.type_name() == ".google.protobuf.Duration" => ("String".to_owned(), None),
        _ => return None,
    };
    let value = if repeated {
        format!("Vec<{inner}>")
    } else if field.r#type() == Type::Message {
        format!("Option<{inner}>")
    } else {
        inner
    };
    Some(match format {
        Some(format) => format!("value_type = {value}, format = {format}"),
        None => format!("value_type = {value}"),
    })
}
