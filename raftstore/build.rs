fn main() {
    println!("cargo:rerun-if-changed=proto/raftpb.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/raftpb.proto"], &["proto"])
        .expect("compile raftpb.proto (needs protoc: apt install protobuf-compiler)");
}
