//! The macro's compile errors, as a user sees them (trybuild). `TRYBUILD=overwrite cargo test
//! -p tierkit-macros --test ui` rewrites the `.stderr` files after a deliberate change; review
//! them before committing.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
