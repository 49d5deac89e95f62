//! `autohealer schema`: the JSON Schema (draft 2020-12) of `reflex_map.yml`, for editors
//! (yaml-language-server) and CI linters. The repository ships its output as
//! `reflex_map.schema.json`, and a test keeps the two identical.

/// The schema, pretty-printed, ending in a newline.
pub fn text() -> String {
    crate::map::reflex_map_schema()
}
