//! `simclr-stage-model`: the learning half of SimCLR, in candle.
//!
//! This first layer holds the pieces every model stage needs and that can be checked against
//! independent computations: the NT-Xent loss ([`loss`]), the optimizers candle-nn lacks
//! (SGD with momentum, Nesterov and weight decay; LARS) ([`optim`]), and learning-rate
//! schedules and scaling rules ([`schedule`]). The encoder, projector, training and
//! checkpoint stages are built on them.
//!
//! [0] SimCLR, Chen et al. 2020, arXiv:2002.05709.
#![deny(missing_docs)]

pub mod loss;
pub mod optim;
pub mod projector;
pub mod resnet;
pub mod schedule;
pub mod small_cnn;
