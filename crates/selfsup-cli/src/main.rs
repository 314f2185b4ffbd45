fn main(){ selfsup::hello(); }
