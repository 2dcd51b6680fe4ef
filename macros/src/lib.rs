//! The `#[cached]` attribute macro of [tierkit](https://docs.rs/tierkit): an `async fn`
//! returning `Result<T, E>` whose `Ok` values are cached through a tierkit namespace. Use it
//! as `tierkit::cached`, with tierkit's `macros` feature; see [`cached`] for what it takes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, GenericParam, ItemFn, Lit, MetaNameValue, Pat,
    PathArguments, ReturnType, Token, Type,
};

/// Caches an `async fn`'s `Ok` results in a tierkit namespace, keyed by its arguments.
///
/// ```
/// use std::sync::LazyLock;
/// use tierkit::Tierkit;
///
/// static KIT: LazyLock<Tierkit> = LazyLock::new(Tierkit::embedded);
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct User { id: u64, name: String }
///
/// #[tierkit::cached(namespace = "users", kit = KIT, ttl = "30m", tags = [format!("org:{org}")])]
/// async fn user(org: u64, id: u64) -> Result<User, tierkit::Error> {
///     // Runs on a miss only: the database call goes here.
///     Ok(User { id, name: format!("user {id} of {org}") })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// assert_eq!(user(7, 42).await?.name, "user 42 of 7"); // loaded
/// assert_eq!(user(7, 42).await?.name, "user 42 of 7"); // from the cache
/// // Invalidation goes through a handle to the same namespace (same name, type and version).
/// let users = KIT.namespace::<User>("users").build()?;
/// users.invalidate_tag("org:7").await?;
/// # Ok(()) }
/// ```
///
/// The function keeps its signature. A call reads the key through the namespace's tiers and
/// runs the body only when neither has it (concurrent calls for one missing key run it once,
/// as [`get_or_load`](https://docs.rs/tierkit/latest/tierkit/cache/struct.Namespace.html#method.get_or_load)),
/// then caches an `Ok` value; an `Err` is returned and not cached.
///
/// # Arguments
///
/// | argument | required | what |
/// |---|---|---|
/// | `namespace = "users"` | yes | the namespace's name (`A-Z a-z 0-9 _ - .`, 1 to 64 characters) |
/// | `kit = KIT` | yes | the [`Tierkit`](https://docs.rs/tierkit/latest/tierkit/struct.Tierkit.html): the name of a parameter (`kit: &Tierkit`, `Tierkit`, `Arc<Tierkit>`), which is then left out of the key, or any other expression that derefs to a `Tierkit`, e.g. a `static KIT: LazyLock<Tierkit>` |
/// | `key = format!("{id}")` | no | the key: an expression of the arguments whose `to_string()` is the key; default below |
/// | `ttl = "30m"` or `ttl_secs = 1800` | no | each entry's TTL: `ms`, `s`, `m`, `h`, `d` units, combined as in `"1h30m"`; default the namespace's (1 hour) |
/// | `tags = ["users", format!("org:{org}")]` | no | tags for `invalidate_tag`, each an expression of the arguments that is `Into<String>` |
/// | `version = 2` | no | the namespace's version: a new one leaves the entries of the old one behind (bump it when `T`'s shape changes) |
///
/// The namespace is declared once per `Tierkit` instance, with the version given and every
/// other setting the default, and kept in a `static` of the function
/// ([`NamespaceSlot`](https://docs.rs/tierkit/latest/tierkit/cache/struct.NamespaceSlot.html)).
/// Handles for invalidation are declared the same way: `kit.namespace::<T>(name)`, with
/// `.version(v)` when the macro has one. A namespace of that name declared with another type
/// or other settings makes every call fail with `Error::Config`.
///
/// # The default key
///
/// Without `key`, the key is every argument but a `kit` parameter, in order, each in its
/// `Display` form with `\` and `:` escaped as `\\` and `\:`, joined by `:`: `(7, "a:b")` gives
/// `7:a\:b`. Distinct argument values therefore give distinct keys as long as their `Display`
/// forms differ; an argument with no `Display` (a database pool, a struct) is a compile error
/// that asks for a `key`. With no argument, the key is the empty string.
///
/// # Requirements
///
/// - A free `async fn` (no `self`), without type or const parameters, whose parameters are
///   plain names (`id: u64`, `mut n: u32`).
/// - It returns `Result<T, E>` (any path whose last segment is `Result`, so aliases such as
///   `tierkit::Result<T>` or `anyhow::Result<T>` too). `T` is what the namespace holds:
///   `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`; the function returns a
///   clone of the cached value. `E: From<tierkit::Error> + Display + Send + 'static`.
/// - The body may outlive the call (a load is shared with concurrent callers), so it owns
///   what it uses: owned arguments are moved into it and borrowed ones (`&str`, `&[u8]`,
///   `&Config`) are copied with `ToOwned` on every call. `&mut` arguments are refused.
///
/// # Errors
///
/// The body's own `Err(e)` comes back as that same `e`. Everything else is a
/// `tierkit::Error` turned into `E` with `From`: a failure of tierkit (an invalid tag, a value
/// too large to store, a namespace declared with other settings), and the failure of a load
/// another call ran for the same key, which this call waited on and shares as
/// `Error::Loader` (carrying the `Display` text of that call's error).
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    match expand(attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        // The function as written goes along with the error, so that its callers do not add
        // errors of their own.
        Err(e) => {
            let error = e.to_compile_error();
            quote!(#error #item).into()
        }
    }
}

/// The macro's arguments, checked.
struct Args {
    namespace: syn::LitStr,
    kit: Expr,
    key: Option<Expr>,
    ttl_ms: Option<u64>,
    tags: Vec<Expr>,
    version: Option<syn::LitInt>,
}

const KNOWN: &str = "namespace, kit, key, ttl, ttl_secs, tags, version";

fn parse_args(attr: TokenStream2) -> syn::Result<Args> {
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated
        .parse2(attr.clone())
        .map_err(|e| {
            syn::Error::new(
                e.span(),
                format!(
                    "#[cached] takes `name = value` arguments ({KNOWN}), e.g. \
                     #[cached(namespace = \"users\", kit = KIT)]: {e}"
                ),
            )
        })?;
    let mut namespace = None;
    let mut kit = None;
    let mut key = None;
    let mut ttl: Option<(u64, Span)> = None;
    let mut tags = None;
    let mut version = None;
    for pair in pairs {
        let Some(name) = pair.path.get_ident().map(ToString::to_string) else {
            return Err(syn::Error::new_spanned(
                &pair.path,
                format!("unknown #[cached] argument; expected one of: {KNOWN}"),
            ));
        };
        let duplicate = || {
            syn::Error::new_spanned(
                &pair.path,
                format!("`{name}` is given twice; give each argument once"),
            )
        };
        match name.as_str() {
            "namespace" => {
                if namespace.is_some() {
                    return Err(duplicate());
                }
                let lit = str_lit(&pair.value).ok_or_else(|| {
                    syn::Error::new_spanned(
                        &pair.value,
                        "`namespace` takes a string literal, e.g. namespace = \"users\"",
                    )
                })?;
                check_name(&lit)?;
                namespace = Some(lit);
            }
            "kit" => {
                if kit.is_some() {
                    return Err(duplicate());
                }
                kit = Some(pair.value);
            }
            "key" => {
                if key.is_some() {
                    return Err(duplicate());
                }
                key = Some(pair.value);
            }
            "ttl" | "ttl_secs" => {
                if ttl.is_some() {
                    return Err(syn::Error::new_spanned(
                        &pair.path,
                        "the TTL is given twice; give one of `ttl` and `ttl_secs`",
                    ));
                }
                let ms = if name == "ttl" {
                    let lit = str_lit(&pair.value).ok_or_else(|| {
                        syn::Error::new_spanned(
                            &pair.value,
                            "`ttl` takes a string literal such as \"30m\", \"1h30m\" or \
                             \"500ms\"; or use ttl_secs = 1800",
                        )
                    })?;
                    parse_ttl(&lit.value())
                        .map_err(|problem| syn::Error::new_spanned(&lit, problem))?
                } else {
                    let lit = int_lit(&pair.value).ok_or_else(|| {
                        syn::Error::new_spanned(
                            &pair.value,
                            "`ttl_secs` takes an integer literal of seconds, e.g. ttl_secs = 1800",
                        )
                    })?;
                    let secs: u64 = lit.base10_parse()?;
                    if secs == 0 {
                        return Err(syn::Error::new_spanned(
                            lit,
                            "a TTL of 0 seconds caches nothing; give at least 1",
                        ));
                    }
                    secs.checked_mul(1000).ok_or_else(|| {
                        syn::Error::new_spanned(lit, "this TTL is too long; give fewer seconds")
                    })?
                };
                ttl = Some((ms, pair.value.span()));
            }
            "tags" => {
                if tags.is_some() {
                    return Err(duplicate());
                }
                let Expr::Array(array) = pair.value else {
                    return Err(syn::Error::new_spanned(
                        &pair.value,
                        "`tags` takes an array of expressions, e.g. \
                         tags = [\"users\", format!(\"org:{org}\")]",
                    ));
                };
                tags = Some(array.elems.into_iter().collect::<Vec<_>>());
            }
            "version" => {
                if version.is_some() {
                    return Err(duplicate());
                }
                let lit = int_lit(&pair.value).ok_or_else(|| {
                    syn::Error::new_spanned(
                        &pair.value,
                        "`version` takes an integer literal (a u32), e.g. version = 2",
                    )
                })?;
                lit.base10_parse::<u32>()
                    .map_err(|_| syn::Error::new_spanned(&lit, "`version` must fit in a u32"))?;
                version = Some(lit);
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    &pair.path,
                    format!("unknown #[cached] argument `{name}`; expected one of: {KNOWN}"),
                ))
            }
        }
    }
    let namespace = namespace.ok_or_else(|| {
        syn::Error::new(
            attr_span(&attr),
            "#[cached] needs `namespace = \"...\"`: the namespace the values are cached in",
        )
    })?;
    let kit = kit.ok_or_else(|| {
        syn::Error::new(
            attr_span(&attr),
            "#[cached] needs `kit = ...`: a static holding the Tierkit (kit = KIT) or the name \
             of a parameter of type &Tierkit (kit = kit)",
        )
    })?;
    Ok(Args {
        namespace,
        kit,
        key,
        ttl_ms: ttl.map(|(ms, _)| ms),
        tags: tags.unwrap_or_default(),
        version,
    })
}

/// Where to point an error about the whole attribute.
fn attr_span(attr: &TokenStream2) -> Span {
    attr.clone()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}

fn str_lit(expr: &Expr) -> Option<syn::LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        _ => None,
    }
}

fn int_lit(expr: &Expr) -> Option<syn::LitInt> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => Some(i.clone()),
        _ => None,
    }
}

/// tierkit's rule for names, checked at compile time rather than at the first call.
fn check_name(lit: &syn::LitStr) -> syn::Result<()> {
    let name = lit.value();
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new_spanned(
            lit,
            format!(
                "namespace {name:?} is not a valid name: use 1 to 64 characters of \
                 A-Z a-z 0-9 _ - ."
            ),
        ))
    }
}

/// A TTL such as `"30m"`, `"1h30m"` or `"500ms"`, in milliseconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a TTL: give numbers with units ms, s, m, h or d, such as \
             \"30m\", \"1h30m\" or \"500ms\""
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("{text:?} is too long a TTL"))?;
    }
    if total == 0 {
        return Err(format!(
            "a TTL of {text:?} caches nothing; give at least 1ms"
        ));
    }
    Ok(total)
}

/// One parameter of the function.
struct Param {
    ident: syn::Ident,
    /// `mut`, if the parameter has it.
    mutability: Option<Token![mut]>,
    ty: Type,
}

/// `T` of `Result<T, E>` (or of an alias `Result<T>`), or an error saying what is expected.
fn ok_type(sig: &syn::Signature) -> syn::Result<Type> {
    let output = &sig.output;
    let expected = "#[cached] needs a fn returning Result<T, E>: the Ok value is cached and \
                    an Err is returned uncached";
    let ReturnType::Type(_, ty) = output else {
        return Err(syn::Error::new_spanned(&sig.ident, expected));
    };
    let Type::Path(path) = &**ty else {
        return Err(syn::Error::new_spanned(ty, expected));
    };
    let Some(last) = path.path.segments.last() else {
        return Err(syn::Error::new_spanned(ty, expected));
    };
    if last.ident != "Result" {
        return Err(syn::Error::new_spanned(ty, expected));
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Err(syn::Error::new_spanned(ty, expected));
    };
    match args.args.first() {
        Some(GenericArgument::Type(t)) => Ok(t.clone()),
        _ => Err(syn::Error::new_spanned(ty, expected)),
    }
}

/// Whether `ident` appears anywhere in `tokens`.
fn mentions(tokens: TokenStream2, ident: &syn::Ident) -> bool {
    tokens.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == *ident,
        TokenTree::Group(g) => mentions(g.stream(), ident),
        _ => false,
    })
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let func: ItemFn = syn::parse2(item)
        .map_err(|e| syn::Error::new(e.span(), format!("#[cached] goes on an async fn: {e}")))?;
    let args = parse_args(attr)?;
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[cached] needs an async fn: the cache is read and filled asynchronously",
        ));
    }
    if let Some(param) = sig
        .generics
        .params
        .iter()
        .find(|p| !matches!(p, GenericParam::Lifetime(_)))
    {
        return Err(syn::Error::new_spanned(
            param,
            "#[cached] does not take type or const parameters: each function keeps one \
             namespace of one value type; write a non-generic fn per type",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "#[cached] does not take variadic fns",
        ));
    }
    let ok_ty = ok_type(sig)?;
    let ret_ty = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => unreachable!("ok_type refused a fn without a return type"),
    };

    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(recv) => {
                return Err(syn::Error::new_spanned(
                    recv,
                    "#[cached] does not take methods with a `self` receiver: the body may \
                     outlive the call, and `self` is not part of the key; write a free fn \
                     taking what it needs",
                ));
            }
            FnArg::Typed(typed) => {
                let Pat::Ident(pat) = &*typed.pat else {
                    return Err(syn::Error::new_spanned(
                        &typed.pat,
                        "#[cached] needs plain parameter names (e.g. `id: u64`), which the \
                         key is made of; destructure inside the body",
                    ));
                };
                if pat.by_ref.is_some() || pat.subpat.is_some() {
                    return Err(syn::Error::new_spanned(
                        &typed.pat,
                        "#[cached] needs plain parameter names (e.g. `id: u64`)",
                    ));
                }
                if let Type::Reference(r) = &*typed.ty {
                    if r.mutability.is_some() {
                        return Err(syn::Error::new_spanned(
                            &typed.ty,
                            "#[cached] does not take `&mut` parameters: the body may run \
                             after the call returns (its load is shared), and a cached call \
                             does not run it at all; pass an owned value",
                        ));
                    }
                }
                params.push(Param {
                    ident: pat.ident.clone(),
                    mutability: pat.mutability,
                    ty: (*typed.ty).clone(),
                });
            }
        }
    }

    // A kit given as a parameter's name is that parameter, left out of the key.
    let kit_param = match &args.kit {
        Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
            let ident = p
                .path
                .get_ident()
                .cloned()
                .unwrap_or_else(|| format_ident!("kit"));
            if params.iter().any(|q| q.ident == ident) {
                Some(ident)
            } else if ident.to_string().starts_with(|c: char| c.is_lowercase()) {
                let names: Vec<String> = params.iter().map(|q| q.ident.to_string()).collect();
                return Err(syn::Error::new_spanned(
                    &args.kit,
                    format!(
                        "`kit = {ident}` names no parameter of `{}` (its parameters: {}); \
                         name a parameter of type &Tierkit, or a static holding one \
                         (kit = KIT)",
                        sig.ident,
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            } else {
                None
            }
        }
        _ => None,
    };

    let kit_expr = &args.kit;
    let name = &args.namespace;
    let version = args.version.as_ref().map(|v| quote!(.version(#v)));
    let kit_span = args.kit.span();
    let ret_span = ret_ty.span();

    // The key, made before anything is moved into the loader.
    let key = match &args.key {
        Some(expr) => quote_spanned! {expr.span()=>
            ::std::string::ToString::to_string(&(#expr))
        },
        None => {
            let parts: Vec<TokenStream2> = params
                .iter()
                .filter(|p| Some(&p.ident) != kit_param.as_ref())
                .enumerate()
                .map(|(i, p)| {
                    let ident = &p.ident;
                    let sep = (i > 0).then(|| quote!(__tierkit_key.push(':');));
                    let part = quote_spanned! {p.ty.span()=>
                        __tierkit_key_part(&mut __tierkit_key, &#ident);
                    };
                    quote!(#sep #part)
                })
                .collect();
            quote! {{
                /// Appends `part`'s Display form, with `\` and `:` escaped.
                fn __tierkit_key_part(key: &mut ::std::string::String, part: &dyn ::std::fmt::Display) {
                    use ::std::fmt::Write as _;
                    let start = key.len();
                    let _ = ::std::write!(key, "{}", part);
                    if key[start..].contains(|c: char| c == ':' || c == '\\') {
                        let written = key.split_off(start);
                        for c in written.chars() {
                            if c == ':' || c == '\\' {
                                key.push('\\');
                            }
                            key.push(c);
                        }
                    }
                }
                let mut __tierkit_key = ::std::string::String::new();
                #(#parts)*
                __tierkit_key
            }}
        }
    };

    // What the loader takes along: owned parameters as they are, borrowed ones copied; the
    // kit parameter only if the body uses it.
    let body = &func.block;
    let body_mentions_kit = kit_param.as_ref().is_some_and(|k| {
        mentions(body.to_token_stream(), k)
            || args.tags.iter().any(|t| mentions(t.to_token_stream(), k))
    });
    let mut take = Vec::new();
    let mut rebind = Vec::new();
    for p in &params {
        if Some(&p.ident) == kit_param.as_ref() && !body_mentions_kit {
            continue;
        }
        let ident = &p.ident;
        let mutability = &p.mutability;
        if let Type::Reference(r) = &p.ty {
            let owned = format_ident!("__tierkit_owned_{}", ident);
            let elem = &r.elem;
            take.push(quote_spanned! {p.ty.span()=>
                let #owned = ::std::borrow::ToOwned::to_owned(#ident);
            });
            rebind.push(quote_spanned! {p.ty.span()=>
                let #mutability #ident: &#elem = ::std::borrow::Borrow::borrow(&#owned);
            });
        } else {
            rebind.push(quote!(let #mutability #ident = #ident;));
        }
    }

    let ttl = args
        .ttl_ms
        .map(|ms| quote!(.ttl(::std::time::Duration::from_millis(#ms))));
    // Tags are worked out before the body runs, which may consume the arguments.
    let tag_values: Vec<TokenStream2> = args
        .tags
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = format_ident!("__tierkit_tag_{}", i);
            quote_spanned! {t.span()=> let #v: ::std::string::String = ::std::convert::Into::into(#t); }
        })
        .collect();
    let tag_names: Vec<syn::Ident> = (0..args.tags.len())
        .map(|i| format_ident!("__tierkit_tag_{}", i))
        .collect();

    let attrs = &func.attrs;
    let vis = &func.vis;
    // The parameters are moved into the loader, which rebinds them with their `mut`: the
    // outer fn never changes them.
    let mut sig = sig.clone();
    for input in &mut sig.inputs {
        if let FnArg::Typed(typed) = input {
            if let Pat::Ident(pat) = &mut *typed.pat {
                pat.mutability = None;
            }
        }
    }
    let slot_ty = quote_spanned! {ok_ty.span()=> ::tierkit::cache::NamespaceSlot<#ok_ty> };
    let kit_ref = quote_spanned! {kit_span=> let __tierkit_kit: &::tierkit::Tierkit = &#kit_expr; };
    let from_error = quote_spanned! {ret_span=> __TierkitError::__tierkit_from };
    let clone_value = quote_spanned! {ok_ty.span()=> <#ok_ty as ::std::clone::Clone>::clone };

    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            static __TIERKIT_SLOT: #slot_ty = ::tierkit::cache::NamespaceSlot::new();
            /// How tierkit's errors become the fn's.
            #[diagnostic::on_unimplemented(
                message = "#[cached] returns tierkit's own errors through the fn's error type: `{Self}` needs `impl From<tierkit::Error>`",
                label = "this error type has no `From<tierkit::Error>`",
                note = "add a variant holding a tierkit::Error with a From impl (e.g. thiserror's #[from]), or return tierkit::Error or anyhow::Error"
            )]
            trait __TierkitError {
                fn __tierkit_from(e: ::tierkit::Error) -> Self;
            }
            impl<E: ::std::convert::From<::tierkit::Error>> __TierkitError for E {
                fn __tierkit_from(e: ::tierkit::Error) -> Self {
                    ::std::convert::From::from(e)
                }
            }
            /// Fixes the body's output type, so that `?` in it converts to the fn's error.
            fn __tierkit_body<F>(body: F) -> F
            where
                F: ::std::future::Future<Output = #ret_ty>,
            {
                body
            }
            #kit_ref
            let __tierkit_ns = match __tierkit_kit.namespace_in(&__TIERKIT_SLOT, |kit| {
                kit.namespace::<#ok_ty>(#name) #version .build()
            }) {
                ::std::result::Result::Ok(ns) => ns,
                ::std::result::Result::Err(e) => return ::std::result::Result::Err(#from_error(e)),
            };
            let __tierkit_key: ::std::string::String = #key;
            #(#take)*
            // The body's own error, handed back to this caller as it is.
            let __tierkit_failed = ::std::sync::Arc::new(::std::sync::Mutex::new(::std::option::Option::None));
            let __tierkit_failure = ::std::sync::Arc::clone(&__tierkit_failed);
            let __tierkit_loader = move || async move {
                #(#rebind)*
                #(#tag_values)*
                let __tierkit_result = __tierkit_body(async move #body).await;
                match __tierkit_result {
                    ::std::result::Result::Ok(value) => {
                        let __tierkit_loaded = ::tierkit::cache::Loaded::value(value) #ttl;
                        #(let __tierkit_loaded = __tierkit_loaded.tag(#tag_names);)*
                        ::std::result::Result::Ok(__tierkit_loaded)
                    }
                    ::std::result::Result::Err(e) => {
                        let text = ::std::string::ToString::to_string(&e);
                        *__tierkit_failure
                            .lock()
                            .unwrap_or_else(::std::sync::PoisonError::into_inner) =
                            ::std::option::Option::Some(e);
                        ::std::result::Result::Err(text)
                    }
                }
            };
            let __tierkit_read = __tierkit_ns
                .get_or_load(&__tierkit_key, &::tierkit::cache::ReadOptions::new(), __tierkit_loader)
                .await;
            match __tierkit_read {
                ::std::result::Result::Ok(::std::option::Option::Some(hit)) => {
                    ::std::result::Result::Ok(#clone_value(&*hit))
                }
                ::std::result::Result::Ok(::std::option::Option::None) => {
                    ::std::result::Result::Err(#from_error(::tierkit::Error::InvalidInput {
                        what: ::std::string::String::from("key"),
                        problem: ::std::format!(
                            "namespace {:?} holds a cached \"not found\" for {:?}, which a \
                             #[cached] fn has no value for; invalidate it",
                            #name, __tierkit_key
                        ),
                    }))
                }
                ::std::result::Result::Err(e) => {
                    let own = __tierkit_failed
                        .lock()
                        .unwrap_or_else(::std::sync::PoisonError::into_inner)
                        .take();
                    match own {
                        ::std::option::Option::Some(own) => ::std::result::Result::Err(own),
                        ::std::option::Option::None => ::std::result::Result::Err(#from_error(e)),
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("500ms"), Ok(500));
        assert_eq!(parse_ttl("30m"), Ok(1_800_000));
        assert_eq!(parse_ttl("1h30m"), Ok(5_400_000));
        assert_eq!(parse_ttl("2d"), Ok(172_800_000));
        assert!(parse_ttl("").is_err());
        assert!(parse_ttl("30").is_err());
        assert!(parse_ttl("m").is_err());
        assert!(parse_ttl("5 weeks").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }
}
