use kube::CustomResourceExt;
fn main() {
    print!("{}", serde_norway::to_string(&omero_operator::api::OmeroCluster::crd()).unwrap());
}
