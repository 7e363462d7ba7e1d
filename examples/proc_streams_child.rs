//! The seed's test child for `proc_streams`: one line to stderr, one to stdout.

fn main() {
    eprintln!("This is stderr");
    println!("This is stdout");
}
