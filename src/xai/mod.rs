//! Explanation and importance methods behind the `score` stage: LRP rules and gradient × input
//! for the MLP and for sequential CNNs (`lrp`, over `nn::seq`'s layers), and weight importances of the EWC
//! family (`importance`); saliency-guided filter scores (`saliency`: filter visualisations
//! against FullGrad class maps); `explain` draws input relevance as heatmaps for `cfpipe explain`.

pub mod explain;
pub mod importance;
pub mod lrp;
pub mod saliency;
