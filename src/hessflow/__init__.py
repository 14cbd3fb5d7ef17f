"""hessflow: Hessian eigenvalue densities of neural networks by stochastic Lanczos quadrature.

Modules (one idea each; the first four never import TensorFlow):
  lanczos    Lanczos on any symmetric operator, float64, full reorthogonalization, resumable
  density    Ritz nodes/weights, Gaussian-smoothed densities, summary statistics
  artifacts  atomic writes and sha256 manifests
  reproduce  rebuild a run's results from its tridiagonals, verified against the manifest (no TensorFlow)
  papercode  the paper code's tridiag_<k>/lanczos_vec_<k> files into hessflow's layouts (no TensorFlow)
  data       CIFAR-10 binary reader, offline data sets, fixed batches, worker partitions
  models     the paper's ResNet-32 and small models
  hvp        the Hessian of a Keras model's training loss, as an operator
  batchnorm  twice-differentiable batch statistics (TensorFlow's are not)
"""

__version__ = "0.1.0"
